"""Multi-node jobs: manifests valid against the CRD schemas, and the exact HTTP the client sends.

A real HTTP server on 127.0.0.1 plays the Kubernetes API server; a kubernetes Configuration points
at it, so create / watch / delete go through the real client, serialiser and urllib3.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cluster_helpers import BackgroundHTTPServer, JsonHandler
from kubernetes import client
from referencing import Registry, Resource

from components.trainjob import (
    PYTORCHJOB,
    TRAINJOB,
    JobFailed,
    JobRunner,
    JobSpec,
    build_manifest,
    job_outcome,
    run_distributed_step,
)

REPO = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).parent / "data" / "crds"
K8S_DEFS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
SCHEMAS = {
    TRAINJOB: "trainer.kubeflow.org_trainjobs.v1alpha1.yaml",
    PYTORCHJOB: "kubeflow.org_pytorchjobs.v1.yaml",
}


def validate_against_crd(obj: dict[str, Any], launcher: str) -> None:
    schema = yaml.safe_load((CRDS / SCHEMAS[launcher]).read_text(encoding="utf-8"))
    defs = json.loads((K8S_DEFS / "v1.32.0-local-strict" / "_definitions.json").read_text(encoding="utf-8"))
    registry = Resource.from_contents(defs) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def spec(**kw: Any) -> JobSpec:
    base: dict[str, Any] = dict(
        name="mem1-ppo-abc123",
        namespace="team-a",
        image="registry.example.com/mem1-trainer:1",
        num_nodes=3,
        gpus_per_node=8,
        args=[
            "-m",
            "mem1_core.cli",
            "ppo",
            "--config",
            "/w/ppo.yaml",
            "--set",
            "ppo.deepspeed_config=ds.json",
        ],
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        workspace_pvc="mem1-workspace",
        env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        secret_env={"AWS_SECRET_ACCESS_KEY": ("mem1-mlflow-credentials", "AWS_SECRET_ACCESS_KEY")},
    )
    base.update(kw)
    return JobSpec(**base)


@pytest.mark.parametrize("launcher", [TRAINJOB, PYTORCHJOB])
def test_manifest_is_valid_for_the_crd(launcher: str) -> None:
    obj = build_manifest(spec(), launcher)
    validate_against_crd(obj, launcher)
    text = json.dumps(obj)
    assert "torchrun" in text and "deepspeed_config" in text and "nvidia.com/gpu" in text
    assert "AWS_SECRET_ACCESS_KEY" in text and "secretKeyRef" in text  # a reference, never a value


def test_trainjob_fields() -> None:
    obj = build_manifest(spec(), TRAINJOB)
    trainer = obj["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    override = obj["spec"]["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mem1-workspace"


def test_pytorchjob_has_one_master_and_n_minus_one_workers() -> None:
    obj = build_manifest(spec(num_nodes=4), PYTORCHJOB)
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert replicas["Master"]["template"]["spec"]["containers"][0]["name"] == "pytorch"
    assert obj["spec"]["nprocPerNode"] == "8"


def test_schema_catches_a_misspelled_field() -> None:
    obj = build_manifest(spec(), TRAINJOB)
    obj["spec"]["trainer"]["numNode"] = obj["spec"]["trainer"].pop("numNodes")
    with pytest.raises(jsonschema.ValidationError, match="numNode"):
        validate_against_crd(obj, TRAINJOB)
    bad = build_manifest(spec(), PYTORCHJOB)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"] = {
        "limit": {}
    }
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(bad, PYTORCHJOB)


def test_bad_inputs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="DNS-1035"):
        spec(name="Mem1_PPO")
    with pytest.raises(ValueError, match="unknown training launcher"):
        build_manifest(spec(), "mpijob")


# ----------------------------------------------------------------------------- fake API server


class FakeApiServer(BackgroundHTTPServer):
    """Records every request; answers watches with scripted condition sequences (JSON lines)."""

    def __init__(self, conditions: list[list[dict[str, str]]], hold_watch: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.conditions = conditions
        self.hold_watch = hold_watch
        self.deleted = threading.Event()
        self.created = threading.Event()
        self.objects: dict[str, dict[str, Any]] = {}
        server = self

        class Handler(JsonHandler):
            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def do_POST(self) -> None:
                body = self._body()
                server.requests.append({"method": "POST", "path": self.path, "body": body})
                server.objects[body["metadata"]["name"]] = body
                server.created.set()
                self.send_json(201, body)

            def do_DELETE(self) -> None:
                server.requests.append({"method": "DELETE", "path": self.path, "body": self._body()})
                server.deleted.set()
                self.send_json(200, {"kind": "Status", "status": "Success"})

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                server.requests.append({"method": "GET", "path": url.path, "query": query})
                name = query["fieldSelector"][0].split("=", 1)[1]
                obj = json.loads(json.dumps(server.objects[name]))
                self.start_watch()
                for i, conds in enumerate(server.conditions):
                    self.send_event(
                        "ADDED" if i == 0 else "MODIFIED", {**obj, "status": {"conditions": conds}}
                    )
                if server.hold_watch:  # a long-running job: keep the watch open until deleted
                    server.deleted.wait(20)

        super().__init__(Handler)

    def close(self) -> None:
        self.deleted.set()

    def api(self) -> client.CustomObjectsApi:
        cfg = client.Configuration()
        cfg.host = self.url
        return client.CustomObjectsApi(client.ApiClient(cfg))


def cond(kind: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("launcher", "path", "done"),
    [
        (TRAINJOB, "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs", "Complete"),
        (PYTORCHJOB, "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs", "Succeeded"),
    ],
)
def test_create_and_watch_to_success(launcher: str, path: str, done: str) -> None:
    script = [
        [],
        [cond("Created", "JobCreated")],
        [cond("Created"), cond(done, "JobSucceeded", "all nodes done")],
    ]
    logs: list[str] = []
    manifest = build_manifest(spec(), launcher)
    with FakeApiServer(script) as srv:
        summary = JobRunner(srv.api(), launcher, logs.append).run(manifest, timeout_s=30)
    post, get = srv.requests[0], srv.requests[1]
    assert post["method"] == "POST" and post["path"] == path
    assert post["body"] == manifest  # exactly the generated resource, nothing added or lost
    assert get["method"] == "GET" and get["path"] == path
    assert get["query"]["watch"] == ["True"]
    assert get["query"]["fieldSelector"] == [f"metadata.name={manifest['metadata']['name']}"]
    assert summary.startswith(done)
    assert any("JobCreated" in line for line in logs)
    assert not any(r["method"] == "DELETE" for r in srv.requests)


def test_failure_carries_the_jobs_reason() -> None:
    script = [
        [cond("Created")],
        [cond("Created"), cond("Failed", "BackoffLimitExceeded", "node-1 exited 137 (OOM)")],
    ]
    with FakeApiServer(script) as srv, pytest.raises(JobFailed, match=r"BackoffLimitExceeded.*OOM"):
        JobRunner(srv.api(), TRAINJOB, lambda s: None).run(build_manifest(spec(), TRAINJOB), timeout_s=30)


def test_sigterm_deletes_the_job() -> None:
    manifest = build_manifest(spec(), PYTORCHJOB)
    with FakeApiServer([[cond("Created")]], hold_watch=True) as srv:

        def cancel() -> None:
            srv.created.wait(10)
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=cancel, daemon=True).start()
        previous = signal.getsignal(signal.SIGTERM)
        with pytest.raises(SystemExit) as exc:
            JobRunner(srv.api(), PYTORCHJOB, lambda s: None).run(manifest, timeout_s=30)
        assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert exc.value.code == 128 + signal.SIGTERM
    delete = next(r for r in srv.requests if r["method"] == "DELETE")
    assert (
        delete["path"]
        == f"/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/{manifest['metadata']['name']}"
    )
    assert delete["body"]["propagationPolicy"] == "Foreground"


def test_outcome_ignores_false_conditions() -> None:
    obj = {"status": {"conditions": [{"type": "Failed", "status": "False"}, cond("Created")]}}
    assert job_outcome(obj, TRAINJOB) == (None, "Created:")


@pytest.mark.parametrize("keyed", [False, True], ids=["fresh-stage", "keyed-work-dir"])
def test_run_distributed_step_stages_workspace_and_copies_model_back(tmp_path: Path, keyed: bool) -> None:
    data, model_in, out = tmp_path / "data", tmp_path / "sft", tmp_path / "out"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"x")
    model_in.mkdir()
    (model_in / "mem1.json").write_text("{}")
    workspace = tmp_path / "ws"
    work_dir = workspace / "checkpoints" / "ppo" / "0123456789abcdef" if keyed else None
    environ = {
        "MEM1_NAMESPACE": "team-a",
        "MEM1_TRAINER_IMAGE": "img:1",
        "MEM1_WORKSPACE": str(workspace),
        "MEM1_WORKSPACE_PVC": "mem1-workspace",
        "MEM1_GPU_NODE_SELECTOR": json.dumps({"pool": "gpu"}),
        "MEM1_GPU_TOLERATIONS": json.dumps([{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",  # the MLflow ConfigMap's value
    }
    run_env = {"MLFLOW_TRACKING_URI": "http://mlflow.mem1:5000", "MLFLOW_RUN_ID": "0123abcd"}
    script = [[cond("Created")], [cond("Complete", "JobSucceeded")]]

    class Worker(FakeApiServer):
        """Plays the workers too: writes the model where the job's --out points, then succeeds."""

    with Worker(script) as srv:
        original_post = srv.httpd.RequestHandlerClass.do_POST

        def do_post(handler: Any) -> None:
            # The "workers" write the model before the API answers, so the job cannot be seen
            # complete before its output exists (the step copies it back right after).
            raw = handler.rfile.read(int(handler.headers["Content-Length"]))
            args = json.loads(raw)["spec"]["trainer"]["args"]
            target = Path(args[args.index("--out") + 1]) / "model"
            target.mkdir(parents=True)
            (target / "model.safetensors").write_bytes(b"weights")
            handler.rfile = io.BytesIO(raw)
            original_post(handler)

        srv.httpd.RequestHandlerClass.do_POST = do_post  # type: ignore[method-assign]
        result = run_distributed_step(
            "ppo",
            json.dumps({"steps": 1}),
            data,
            model_in,
            out,
            2,
            4,
            TRAINJOB,
            api=srv.api(),
            environ=environ,
            worker_env=run_env,
            work_dir=work_dir,
        )
    body = srv.requests[0]["body"]
    validate_against_crd(body, TRAINJOB)
    args = body["spec"]["trainer"]["args"]
    assert args[:3] == ["-m", "mem1_core.cli", "ppo"]
    assert "ppo.deepspeed_config=configs/deepspeed_zero3.json" in args
    assert (REPO / "configs" / "deepspeed_zero3.json").is_file()
    assert Path(args[args.index("--model") + 1]).joinpath("mem1.json").is_file()
    assert Path(args[args.index("--data-dir") + 1]).joinpath("train.parquet").is_file()
    assert yaml.safe_load(Path(args[args.index("--config") + 1]).read_text()) == {"ppo": {"steps": 1}}
    assert body["spec"]["podTemplateOverrides"][0]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert (result / "model.safetensors").read_bytes() == b"weights"
    if work_dir is not None:  # the workers wrote (and a rerun's job resumes) in the keyed folder
        assert Path(args[args.index("--out") + 1]) == work_dir and result == work_dir / "model"
    # the step's MLflow run reaches the workers (where it lives wins over the ConfigMap's URI)
    env = {e["name"]: e for e in body["spec"]["trainer"]["env"]}
    assert {k: env[k]["value"] for k in run_env} == run_env
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mem1-mlflow-credentials"


@pytest.mark.parametrize("kind", ["sft", "ppo"])
def test_workers_default_to_zero3_unless_the_step_names_a_deepspeed_config(kind: str, tmp_path: Path) -> None:
    from components.worker import step_command, write_step_config

    plain = write_step_config(kind, json.dumps({"seed": 0}), tmp_path / "plain.yaml")
    args = step_command(kind, plain, tmp_path / "data", None, tmp_path / "out")
    assert args[args.index("--set") + 1] == f"{kind}.deepspeed_config=configs/deepspeed_zero3.json"
    own = write_step_config(
        kind, json.dumps({"deepspeed_config": "configs/deepspeed_zero2.json"}), tmp_path / "own.yaml"
    )
    assert "--set" not in step_command(kind, own, tmp_path / "data", None, tmp_path / "out")
