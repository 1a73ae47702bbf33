"""Multi-node training: a Kubeflow TrainJob (trainer.kubeflow.org/v1alpha1) or PyTorchJob (kubeflow.org/v1).

The sft/ppo component calls `run_distributed_step` when num_nodes > 1. It stages the step's inputs on
the shared workspace volume, creates the job through the kubernetes client (CustomObjectsApi), follows
its conditions with a watch, fails with the job's own reason, and deletes the job if the step is
cancelled (KFP sends SIGTERM). Every worker runs `torchrun -m mem1_core.cli <step> ...` (PPO with
DeepSpeed ZeRO-3); both operators inject the PET_* variables torchrun reads (nnodes, rank, master).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import pod_env
from components.worker import step_command, write_step_config

TRAINJOB = "trainjob"
PYTORCHJOB = "pytorchjob"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    success: str  # the condition type that means done


RESOURCES: dict[str, Resource] = {
    TRAINJOB: Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Complete"),
    PYTORCHJOB: Resource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "Succeeded"),
}


class JobFailed(RuntimeError):
    """The training job ended in a Failed condition (the message carries the job's reason)."""


@dataclass
class JobSpec:
    """One distributed training job: N nodes x G GPUs running the same worker command."""

    name: str
    namespace: str
    image: str
    num_nodes: int
    gpus_per_node: int
    args: list[str]  # after `torchrun`, e.g. ["-m", "mem1_core.cli", "ppo", ...]
    accelerator: str = "nvidia.com/gpu"
    cpu: str = "8"
    memory: str = "64Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    workspace_pvc: str | None = None
    workspace_mount: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)  # ENV -> (secret, key)
    service_account: str | None = None
    runtime: str = "torch-distributed"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError(f"job {self.name}: num_nodes must be >= 1 and gpus_per_node >= 0")
        if len(self.name) > 63 or not self.name[:1].isalpha() or not self.name.replace("-", "").isalnum():
            raise ValueError(f"job name {self.name!r}: must be a DNS-1035 label of at most 63 characters")


def job_name(kind: str) -> str:
    return f"mem1-{kind}-{uuid.uuid4().hex[:10]}"


def _env(spec: JobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    for name, (secret, key) in sorted(spec.secret_env.items()):
        env.append(
            {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        )
    return env


def _resources(spec: JobSpec) -> dict[str, Any]:
    res: dict[str, Any] = {"requests": {"cpu": spec.cpu, "memory": spec.memory}}
    if spec.gpus_per_node:
        res["limits"] = {spec.accelerator: str(spec.gpus_per_node)}
        res["requests"][spec.accelerator] = str(spec.gpus_per_node)
    return res


def _volumes(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not spec.workspace_pvc:
        return [], []
    vol = {"name": "workspace", "persistentVolumeClaim": {"claimName": spec.workspace_pvc}}
    return [vol], [{"name": "workspace", "mountPath": spec.workspace_mount}]


def _metadata(spec: JobSpec) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": "mem1", "app.kubernetes.io/component": "training", **spec.labels}
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels}


def _pod_placement(spec: JobSpec, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """Pod spec fields both job kinds set alike: service account, GPU pool placement, volumes."""
    pod: dict[str, Any] = {}
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = list(spec.tolerations)
    if volumes:
        pod["volumes"] = volumes
    return pod


def trainjob_manifest(spec: JobSpec) -> dict[str, Any]:
    """A TrainJob on the `torch-distributed` ClusterTrainingRuntime, overriding pool and volume."""
    volumes, mounts = _volumes(spec)
    pod = _pod_placement(spec, volumes)
    if volumes:
        pod["containers"] = [{"name": "node", "volumeMounts": mounts}]
    body: dict[str, Any] = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec),
        "spec": {
            "runtimeRef": {
                "name": spec.runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            "trainer": {
                "image": spec.image,
                "command": ["torchrun"],
                "args": list(spec.args),
                "env": _env(spec),
                "numNodes": spec.num_nodes,
                "numProcPerNode": max(spec.gpus_per_node, 1),
                "resourcesPerNode": _resources(spec),
            },
        },
    }
    if pod:
        body["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}], "spec": pod}]
    return body


def pytorchjob_manifest(spec: JobSpec) -> dict[str, Any]:
    """A PyTorchJob (training-operator v1): one Master and num_nodes - 1 Workers, same pod template."""
    volumes, mounts = _volumes(spec)
    container: dict[str, Any] = {
        "name": "pytorch",  # the operator finds the training container by this name
        "image": spec.image,
        "command": ["torchrun"],
        "args": list(spec.args),
        "env": _env(spec),
        "resources": _resources(spec),
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [container], **_pod_placement(spec, volumes)}
    template = {"metadata": {"labels": {"app.kubernetes.io/part-of": "mem1"}}, "spec": pod}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if spec.num_nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.num_nodes - 1,
            "restartPolicy": "OnFailure",
            "template": template,
        }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec),
        "spec": {
            "nprocPerNode": str(max(spec.gpus_per_node, 1)),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_manifest(spec: JobSpec, launcher: str) -> dict[str, Any]:
    if launcher == TRAINJOB:
        return trainjob_manifest(spec)
    if launcher == PYTORCHJOB:
        return pytorchjob_manifest(spec)
    raise ValueError(f"unknown training launcher {launcher!r}: use {TRAINJOB} or {PYTORCHJOB}")


def job_outcome(obj: dict[str, Any], launcher: str) -> tuple[str | None, str]:
    """('succeeded' | 'failed' | None while running, a one-line summary of the latest condition)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    success = RESOURCES[launcher].success
    summary = ""
    for cond in conditions:
        if str(cond.get("status")) != "True":
            continue
        kind = cond.get("type", "")
        summary = f"{kind}: {cond.get('reason', '')} {cond.get('message', '')}".strip()
        if kind == "Failed":
            return "failed", summary
        if kind == success:
            return "succeeded", summary
    return None, summary


class JobRunner:
    """Create, follow and delete one job through a CustomObjectsApi (any configured ApiClient)."""

    def __init__(self, api: Any, launcher: str, log: Callable[[str], None] = print) -> None:
        if launcher not in RESOURCES:
            raise ValueError(f"unknown training launcher {launcher!r}: use {TRAINJOB} or {PYTORCHJOB}")
        self.api = api
        self.launcher = launcher
        self.res = RESOURCES[launcher]
        self.log = log

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        ns = manifest["metadata"]["namespace"]
        return self.api.create_namespaced_custom_object(
            self.res.group, self.res.version, ns, self.res.plural, manifest
        )

    def delete(self, name: str, namespace: str) -> None:
        from kubernetes.client import V1DeleteOptions  # lazy: as in custom_objects_api

        self.api.delete_namespaced_custom_object(
            self.res.group,
            self.res.version,
            namespace,
            self.res.plural,
            name,
            body=V1DeleteOptions(propagation_policy="Foreground"),
        )

    def wait(self, name: str, namespace: str, timeout_s: float | None = None, watch_s: int = 300) -> str:
        """Follow the job's conditions until it succeeds (returns the summary) or fails (raises)."""
        from kubernetes import watch  # lazy: as in custom_objects_api

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = ""
        while deadline is None or time.monotonic() < deadline:
            w = watch.Watch()
            stream = w.stream(
                self.api.list_namespaced_custom_object,
                self.res.group,
                self.res.version,
                namespace,
                self.res.plural,
                field_selector=f"metadata.name={name}",
                timeout_seconds=watch_s,
            )
            for event in stream:
                obj = event["object"]
                if event["type"] == "DELETED":
                    raise JobFailed(f"{self.res.kind} {namespace}/{name} was deleted before it finished")
                outcome, summary = job_outcome(obj, self.launcher)
                if summary and summary != last:
                    self.log(f"{self.res.kind} {name}: {summary}")
                    last = summary
                if outcome == "succeeded":
                    w.stop()
                    return summary
                if outcome == "failed":
                    w.stop()
                    raise JobFailed(f"{self.res.kind} {namespace}/{name} failed: {summary}")
            # the watch timed out or the connection dropped: start a new one
        raise JobFailed(f"{self.res.kind} {namespace}/{name} did not finish within {timeout_s}s")

    def run(self, manifest: dict[str, Any], timeout_s: float | None = None) -> str:
        """Create the job, wait for it, and delete it if this process is told to stop (SIGTERM)."""
        name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        self.create(manifest)
        self.log(f"created {self.res.kind} {ns}/{name}")
        with self._delete_on_sigterm(name, ns):
            return self.wait(name, ns, timeout_s)

    @contextmanager
    def _delete_on_sigterm(self, name: str, namespace: str) -> Iterator[None]:
        def on_term(signum: int, frame: Any) -> None:
            self.log(f"cancelled: deleting {self.res.kind} {namespace}/{name}")
            try:
                self.delete(name, namespace)
            finally:
                raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def custom_objects_api(configuration: Any | None = None) -> Any:
    """In-cluster credentials (the pipeline runner's service account), else the local kubeconfig."""
    from kubernetes import client, config  # lazy: only to launch a multi-node job from a pod

    if configuration is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return client.CustomObjectsApi()
    return client.CustomObjectsApi(client.ApiClient(configuration))


def run_distributed_step(
    kind: str,
    section: str,
    data_dir: Path,
    model_dir: Path | None,
    out_dir: Path,
    num_nodes: int,
    gpus_per_node: int,
    launcher: str,
    api: Any | None = None,
    environ: dict[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
    work_dir: Path | None = None,
) -> Path:
    """Stage inputs on the shared workspace, run the job, copy the trained model back to `out_dir`.

    With `work_dir` (a folder on the workspace volume keyed by the step's inputs: components.workdir)
    the workers write their checkpoints and the model there, so the job of a rerun after a kill resumes
    from them, and the model is returned where it lies; without it, in a fresh folder of the stage.

    Cluster facts come from the environment the pipeline sets on the training tasks (components.pod_env:
    namespace, trainer image, workspace and its PVC, GPU node selector and tolerations). `worker_env`
    (the step's MLflow run: MLFLOW_RUN_ID and the URI it lives at) is added to the workers' env, over
    the MLflow ConfigMap's values.
    """
    env = dict(os.environ if environ is None else environ)
    missing = [k for k in pod_env.REQUIRED if not env.get(k)]
    if missing:
        raise RuntimeError(f"multi-node {kind} needs {', '.join(missing)} (set by the compiled pipeline)")
    name = job_name(kind)
    stage = Path(env[pod_env.WORKSPACE]) / name
    data_stage = Path(shutil.copytree(data_dir, stage / "data"))
    model_stage = Path(shutil.copytree(model_dir, stage / "model_in")) if model_dir is not None else None
    out_stage = Path(work_dir) if work_dir is not None else stage / "model_out"
    config_path = write_step_config(kind, section, stage / f"{kind}.yaml")
    spec = JobSpec(
        name=name,
        namespace=env[pod_env.NAMESPACE],
        image=env[pod_env.TRAINER_IMAGE],
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        args=step_command(kind, config_path, data_stage, model_stage, out_stage),
        node_selector=json.loads(env.get(pod_env.GPU_NODE_SELECTOR, "{}")),
        tolerations=json.loads(env.get(pod_env.GPU_TOLERATIONS, "[]")),
        workspace_pvc=env.get(pod_env.WORKSPACE_PVC) or None,
        workspace_mount=env[pod_env.WORKSPACE],
        env={**{k: env[k] for k in pod_env.MLFLOW_CONFIG_KEYS if env.get(k)}, **(worker_env or {})},
        secret_env={
            k: (env.get(pod_env.MLFLOW_SECRET, pod_env.DEFAULT_MLFLOW_SECRET), k)
            for k in pod_env.MLFLOW_SECRET_KEYS
        },
    )
    JobRunner(api or custom_objects_api(), launcher).run(build_manifest(spec, launcher))
    trained = out_stage / "model"
    if not trained.is_dir():
        raise JobFailed(f"job {name} succeeded but wrote no model to {trained}")
    if work_dir is not None:
        return trained
    shutil.copytree(trained, out_dir, dirs_exist_ok=True)
    return out_dir
