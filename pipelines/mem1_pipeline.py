"""The MEM1 pipeline: prepare -> compose -> sft -> ppo -> eval -> register, closed by an exit handler.

Wiring and placement only; every step's work happens in mem1_core through components/. Cluster facts
that do not change per run (GPU node pool, secret and volume names, requests) are compile-time
`ClusterOptions`; what a user varies per run (config, model, objectives, nodes, GPUs, MLflow tracking URI,
the gate's floor) are pipeline parameters.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl, kubernetes

import components
from components import pod_env
from components.images import Images
from mem1_core.config import PipelineConfig

PIPELINE_NAME = "mem1-pipeline"
# Pipeline parameters that were renamed, each with its new name: the MLflow tracking URI is
# `tracking_uri` as in the config and the components, and the gate's floor is named as in the config.
RENAMED_PARAMETERS = {"mlflow_uri": "tracking_uri", "em_floor": "gate_floor"}


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"


@dataclass(frozen=True)
class ClusterOptions:
    """Where the steps run; defaults match manifests/ (secret, config map, PVC and RBAC names)."""

    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    gpu_cpu_request: str = "8"
    gpu_memory_request: str = "64Gi"
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    light_cpu_request: str = "250m"
    light_memory_request: str = "512Mi"
    mlflow_secret: str = pod_env.DEFAULT_MLFLOW_SECRET
    mlflow_secret_keys: tuple[str, ...] = pod_env.MLFLOW_SECRET_KEYS
    mlflow_config_map: str = pod_env.DEFAULT_MLFLOW_CONFIG_MAP
    mlflow_config_keys: tuple[str, ...] = pod_env.MLFLOW_CONFIG_KEYS
    hf_secret: str = "mem1-hf-token"
    workspace_pvc: str = "mem1-workspace"
    workspace_mount: str = "/workspace"
    # where sft and ppo keep checkpoints across runs, keyed by their inputs; "" means
    # <workspace_mount>/checkpoints on the shared volume, where a rerun after a killed pod resumes
    checkpoint_root: str = ""
    # False only for kfp.local, which ignores resources and cannot resolve parameter-valued
    # accelerator placeholders inside the exit-handler sub-DAG
    request_accelerators: bool = True
    retries: int = 2
    retry_backoff: str = "60s"
    train_timeout_s: int = 3 * 24 * 3600
    # The non-root users the images are built with (images/*.Dockerfile `USER`); every step pod runs
    # as that user with runAsNonRoot, so a cluster under Pod Security "restricted" admits it.
    base_uid: int = 1000
    trainer_uid: int = 1001


def _with_mlflow_env(task: Any, cluster: ClusterOptions) -> Any:
    """MLflow endpoint from a ConfigMap and credentials from a Secret, by reference only."""
    kubernetes.use_config_map_as_env(
        task, cluster.mlflow_config_map, {k: k for k in cluster.mlflow_config_keys}, optional=True
    )
    kubernetes.use_secret_as_env(
        task, cluster.mlflow_secret, {k: k for k in cluster.mlflow_secret_keys}, optional=True
    )
    return task


def _on_gpu_pool(task: Any, cluster: ClusterOptions, accelerator_type: Any, gpus: Any) -> Any:
    if cluster.request_accelerators:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
    task.set_cpu_request(cluster.gpu_cpu_request).set_memory_request(cluster.gpu_memory_request)
    for key, value in cluster.gpu_node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for t in cluster.gpu_tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    return task


def _non_root(task: Any, uid: int) -> Any:
    """runAsUser/runAsGroup = the image's user and runAsNonRoot; KFP drops all capabilities too."""
    return kubernetes.set_security_context(task, run_as_user=uid, run_as_group=uid, run_as_non_root=True)


def _light(task: Any, cluster: ClusterOptions) -> Any:
    return task.set_cpu_request(cluster.light_cpu_request).set_memory_request(cluster.light_memory_request)


def _retry(task: Any, cluster: ClusterOptions) -> Any:
    if cluster.retries <= 0:
        return task
    return task.set_retry(
        num_retries=cluster.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0
    )


def _trainer_env(task: Any, cluster: ClusterOptions, images: Images) -> Any:
    """What a training step needs to launch a multi-node job: namespace, image, pool, shared volume."""
    kubernetes.use_field_path_as_env(task, pod_env.NAMESPACE, "metadata.namespace")
    kubernetes.use_secret_as_env(task, cluster.hf_secret, {"HF_TOKEN": "HF_TOKEN"}, optional=True)
    kubernetes.mount_pvc(task, cluster.workspace_pvc, cluster.workspace_mount)
    tolerations = [{k: v for k, v in vars(t).items() if v is not None} for t in cluster.gpu_tolerations]
    env = {
        pod_env.TRAINER_IMAGE: images.trainer,
        pod_env.WORKSPACE: cluster.workspace_mount,
        pod_env.WORKSPACE_PVC: cluster.workspace_pvc,
        pod_env.CHECKPOINT_ROOT: cluster.checkpoint_root or f"{cluster.workspace_mount}/checkpoints",
        pod_env.GPU_NODE_SELECTOR: json.dumps(cluster.gpu_node_selector, sort_keys=True),
        pod_env.GPU_TOLERATIONS: json.dumps(tolerations, sort_keys=True),
        pod_env.MLFLOW_SECRET: cluster.mlflow_secret,
        pod_env.MLFLOW_CONFIG_MAP: cluster.mlflow_config_map,
    }
    for name, value in env.items():
        task.set_env_variable(name, value)
    kubernetes.set_timeout(task, cluster.train_timeout_s)
    return task


def _training_step(
    task: Any, cluster: ClusterOptions, images: Images, accelerator_type: Any, gpus: Any
) -> Any:
    """SFT and PPO: uncached, on the GPU pool, with MLflow and the multi-node launch environment, retried."""
    task.set_caching_options(enable_caching=False)
    placed = _on_gpu_pool(task, cluster, accelerator_type, gpus)
    return _retry(_trainer_env(_with_mlflow_env(placed, cluster), cluster, images), cluster)


def build_pipeline(
    images: Images | None = None,
    cluster: ClusterOptions | None = None,
    default_config: PipelineConfig | None = None,
) -> Any:
    """The pipeline function (a KFP GraphComponent) for these images, cluster and default config."""
    images = images or Images.from_env()
    cluster = cluster or ClusterOptions()
    c = components.build(images)
    default_json = json.dumps((default_config or PipelineConfig()).model_dump(mode="json"), sort_keys=True)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="MEM1 constant-memory agents: compose tasks, SFT warm-up, PPO with the MEM1 mask, "
        "evaluate over objective counts and memory modes, register behind a promotion gate.",
    )
    def mem1_pipeline(
        config_json: str = default_json,
        overrides: dict = {},  # noqa: B006 - KFP parameter default, never mutated
        base_model: str = "",
        sources_json: str = "",
        train_objectives: list = [],  # noqa: B006
        eval_objectives: list = [],  # noqa: B006
        gate_floor: float = -1.0,
        domain: str = "",
        tracking_uri: str = "",
        experiment: str = "",
        num_nodes: int = 1,
        gpus_per_node: int = 1,
        accelerator_type: str = "nvidia.com/gpu",
        training_launcher: str = "trainjob",
    ) -> None:
        finish = c.finish_run(tracking_uri=tracking_uri, pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish.set_display_name("close MLflow run").set_caching_options(enable_caching=False)
        _with_mlflow_env(_light(finish, cluster), cluster)
        _non_root(finish, cluster.base_uid)

        with dsl.ExitHandler(finish, name="mem1"):
            prep = c.prepare_run(
                config_json=config_json,
                overrides=overrides,
                base_model=base_model,
                sources_json=sources_json,
                train_objectives=train_objectives,
                eval_objectives=eval_objectives,
                gate_floor=gate_floor,
                domain=domain,
                tracking_uri=tracking_uri,
                experiment=experiment,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
            ).set_display_name("prepare run")
            prep.set_caching_options(enable_caching=False)
            _retry(_with_mlflow_env(_light(prep, cluster), cluster), cluster)
            _non_root(prep, cluster.base_uid)
            uri = prep.outputs["tracking_uri"]
            parent = prep.outputs["parent_run_id"]

            def record(step: str, section: Any, task: Any, metrics: str, files: str, name: str) -> Any:
                """An uncached record_step logging a cached step's outputs under the parent run."""
                rec = c.record_step(
                    tracking_uri=uri,
                    parent_run_id=parent,
                    step=step,
                    section_json=section,
                    metrics=task.outputs[metrics],
                    files=task.outputs[files],
                ).set_display_name(name)
                rec.set_caching_options(enable_caching=False)
                _non_root(rec, cluster.base_uid)
                return _retry(_with_mlflow_env(_light(rec, cluster), cluster), cluster)

            compose = c.compose(compose_json=prep.outputs["compose"]).set_display_name("compose dataset")
            compose.set_caching_options(enable_caching=True)
            compose.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
            kubernetes.use_secret_as_env(compose, cluster.hf_secret, {"HF_TOKEN": "HF_TOKEN"}, optional=True)
            _retry(_non_root(compose, cluster.base_uid), cluster)

            record("compose", prep.outputs["compose"], compose, "stats", "dataset", "log compose")

            sft = c.sft(
                sft_json=prep.outputs["sft"],
                tracking_uri=uri,
                parent_run_id=parent,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                launcher=training_launcher,
                dataset=compose.outputs["dataset"],
            ).set_display_name("SFT warm-up")
            _training_step(sft, cluster, images, accelerator_type, gpus_per_node)
            _non_root(sft, cluster.trainer_uid)

            ppo = c.ppo(
                ppo_json=prep.outputs["ppo"],
                tracking_uri=uri,
                parent_run_id=parent,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                launcher=training_launcher,
                dataset=compose.outputs["dataset"],
                sft_model=sft.outputs["model"],
            ).set_display_name("PPO")
            _training_step(ppo, cluster, images, accelerator_type, gpus_per_node)
            _non_root(ppo, cluster.trainer_uid)

            ev = c.eval(
                eval_json=prep.outputs["eval"],
                dataset=compose.outputs["dataset"],
                model=ppo.outputs["model"],
            ).set_display_name("evaluate")
            ev.set_caching_options(enable_caching=True)
            _retry(_on_gpu_pool(_non_root(ev, cluster.trainer_uid), cluster, accelerator_type, 1), cluster)

            record_eval = record("eval", prep.outputs["eval"], ev, "metrics", "results", "log evaluation")

            register = c.register(
                register_json=prep.outputs["register"],
                tracking_uri=uri,
                parent_run_id=parent,
                dataset=compose.outputs["dataset"],
                model=ppo.outputs["model"],
                eval_results=ev.outputs["results"],
            ).set_display_name("register model")
            register.set_caching_options(enable_caching=False)
            register.after(record_eval)
            _with_mlflow_env(_light(register, cluster), cluster)
            _non_root(register, cluster.base_uid)

    return mem1_pipeline
