"""`make compile`'s output: GPU placement, retries, caching and secret references, and no secret values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mem1_core.cli import main
from mem1_core.config import load_config

REPO = Path(__file__).resolve().parents[1]
GPU_STEPS = ("sft", "ppo", "eval")
SECRET_VALUES = {
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-do-not-ship",
    "MLFLOW_TRACKING_PASSWORD": "hunter2-do-not-ship",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("compile") / "mem1_pipeline.yaml"
    mp = pytest.MonkeyPatch()
    for k, v in SECRET_VALUES.items():  # present in the compiling shell; must not leak into the YAML
        mp.setenv(k, v)
    mp.setenv("MEM1_IMAGE_REGISTRY", "registry.example.com/team")
    mp.setenv("MEM1_IMAGE_TAG", "abc123")
    try:
        rc = main(
            ["pipeline", "compile", "--output", str(out), "--config", str(REPO / "configs/local-tiny.yaml")]
        )
    finally:
        mp.undo()
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    spec, platform = list(yaml.safe_load_all(text))
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict[str, Any]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for comp in [spec["root"], *spec["components"].values()]:
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_all_steps_present_and_chained(compiled: tuple[str, dict, dict]) -> None:
    _, spec, _ = compiled
    tasks = _tasks(spec)
    for name in (
        "prepare-run",
        "compose",
        "sft",
        "ppo",
        "eval",
        "register",
        "finish-run",
    ):
        assert name in tasks, name
    assert "sft" in tasks["ppo"]["dependentTasks"]
    assert "ppo" in tasks["eval"]["dependentTasks"]
    assert {"ppo", "eval"} <= set(tasks["register"]["dependentTasks"])
    assert tasks["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_gpu_steps_request_accelerators_cpu_memory_and_gpu_pool(compiled: tuple[str, dict, dict]) -> None:
    _, spec, platform = compiled
    execs = spec["deploymentSpec"]["executors"]
    for step in GPU_STEPS:
        res = execs[f"exec-{step}"]["container"]["resources"]
        assert "accelerator_type" in res["accelerator"]["resourceType"]
        count = res["accelerator"]["resourceCount"]
        assert ("gpus_per_node" in count) if step != "eval" else count == "1"
        assert res["resourceCpuRequest"] == "8" and res["resourceMemoryRequest"] == "64Gi"
        k8s = platform[f"exec-{step}"]
        assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    # CPU steps stay off the GPU pool
    for step in ("compose", "register", "prepare-run"):
        assert "accelerator" not in execs[f"exec-{step}"]["container"].get("resources", {})
        assert "nodeSelector" not in platform.get(f"exec-{step}", {})


def test_training_steps_can_launch_multi_node_jobs(compiled: tuple[str, dict, dict]) -> None:
    _, spec, platform = compiled
    for step in ("sft", "ppo"):
        env = {
            e["name"]: e["value"]
            for e in spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["env"]
        }
        assert env["MEM1_TRAINER_IMAGE"] == "registry.example.com/team/mem1-trainer:abc123"
        assert json.loads(env["MEM1_GPU_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
        assert platform[f"exec-{step}"]["pvcMount"][0]["mountPath"] == "/workspace"
        assert platform[f"exec-{step}"]["fieldPathAsEnv"] == [
            {"fieldPath": "metadata.namespace", "name": "MEM1_NAMESPACE"}
        ]


def test_retry_and_caching_policies(compiled: tuple[str, dict, dict]) -> None:
    _, spec, _ = compiled
    tasks = _tasks(spec)
    for name in ("compose", "sft", "ppo", "eval"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name
        assert tasks[name]["retryPolicy"]["backoffDuration"] == "60s"
    assert "retryPolicy" not in tasks["register"]  # a retry could register a second version
    assert tasks["compose"]["cachingOptions"] == {"enableCache": True}
    assert tasks["eval"]["cachingOptions"] == {"enableCache": True}
    for name in ("prepare-run", "sft", "ppo", "register", "finish-run"):
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    # cached steps must not take the per-run parent id, or they would never hit the cache
    for name in ("compose", "eval"):
        assert "parent_run_id" not in tasks[name]["inputs"].get("parameters", {})


def test_secrets_are_references_only(compiled: tuple[str, dict, dict]) -> None:
    text, _, platform = compiled
    for step in ("prepare-run", "sft", "ppo", "register", "finish-run"):
        secrets = {s["secretName"]: s for s in platform[f"exec-{step}"]["secretAsEnv"]}
        ref = secrets["mem1-mlflow-credentials"]
        envs = {m["envVar"] for m in ref["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= envs
        cms = {c["configMapName"] for c in platform[f"exec-{step}"]["configMapAsEnv"]}
        assert "mem1-mlflow" in cms
    for value in SECRET_VALUES.values():
        assert value not in text


def test_images_and_no_runtime_pip_install(compiled: tuple[str, dict, dict]) -> None:
    text, spec, _ = compiled
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {
        "registry.example.com/team/mem1-base:abc123",
        "registry.example.com/team/mem1-trainer:abc123",
    }
    assert spec["deploymentSpec"]["executors"]["exec-ppo"]["container"]["image"].endswith(
        "mem1-trainer:abc123"
    )
    assert "pip install" not in text


def test_default_config_is_the_compiled_in_preset(compiled: tuple[str, dict, dict]) -> None:
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    default = json.loads(params["config_json"]["defaultValue"])
    assert default == load_config(REPO / "configs/local-tiny.yaml").model_dump(mode="json")
    for name in (
        "base_model",
        "train_objectives",
        "eval_objectives",
        "num_nodes",
        "gpus_per_node",
        "accelerator_type",
        "tracking_uri",
        "gate_floor",
        "domain",
        "overrides",
        "training_launcher",
    ):
        assert name in params, name


class _FakeKfpApi:
    """A real HTTP server on 127.0.0.1 answering the KFP v2beta1 calls that `submit` makes."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                api.requests.append(
                    {"method": self.command, "path": self.path, "headers": headers, "body": body}
                )

            def do_GET(self) -> None:
                self._record(None)
                self._send({"experiments": []} if "/experiments" in self.path else {})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                self._record(body)
                if self.path.startswith("/apis/v2beta1/experiments"):
                    self._send({"experiment_id": "exp-1", "display_name": body["display_name"]})
                else:
                    self._send(
                        {"run_id": "run-123", "display_name": body["display_name"], "experiment_id": "exp-1"}
                    )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_submit_sends_the_compiled_spec_with_parameters_and_token(
    compiled: tuple[str, dict, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, spec, _ = compiled
    package = tmp_path / "p.yaml"
    package.write_text(yaml.safe_dump_all(list(yaml.safe_load_all(compiled[0]))), encoding="utf-8")
    api = _FakeKfpApi()
    monkeypatch.setenv("KFP_HOST", api.url)
    monkeypatch.setenv("KFP_TOKEN", "tok-abc")
    try:
        rc = main(
            [
                "pipeline",
                "submit",
                "--package",
                str(package),
                "--namespace",
                "team-a",
                "--run-name",
                "r1",
                "--param",
                "num_nodes=2",
                "--param",
                "base_model=Qwen/Qwen2.5-7B",
                "--param",
                "eval_objectives=[1,16]",
            ]
        )
    finally:
        api.httpd.shutdown()
    assert rc == 0 and "submitted run run-123" in capsys.readouterr().out
    run = next(r for r in api.requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs")
    assert run["headers"]["authorization"] == "Bearer tok-abc"
    assert run["body"]["display_name"] == "r1" and run["body"]["experiment_id"] == "exp-1"
    assert run["body"]["runtime_config"]["parameters"] == {
        "num_nodes": 2,
        "base_model": "Qwen/Qwen2.5-7B",
        "eval_objectives": [1, 16],
    }
    sent = run["body"]["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"] == spec["pipelineInfo"]
    assert "kubernetes" in sent["platform_spec"]["platforms"]  # GPU pool, secrets, PVC travel with the run
    exp = next(r for r in api.requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/experiments")
    assert exp["body"] == {"display_name": "mem1", "namespace": "team-a"}


def test_submit_accepts_the_old_parameter_names_with_a_warning(
    compiled: tuple[str, dict, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mem1_core.config import DeprecatedNameWarning
    from pipelines.run import renamed_parameters

    package = tmp_path / "p.yaml"
    package.write_text(compiled[0], encoding="utf-8")
    api = _FakeKfpApi()
    monkeypatch.setenv("KFP_HOST", api.url)
    old = ["--param", "mlflow_uri=http://mlflow:5000", "--param", "em_floor=0.1"]
    try:
        with pytest.warns(DeprecatedNameWarning) as seen:
            assert main(["pipeline", "submit", "--package", str(package), *old]) == 0
    finally:
        api.httpd.shutdown()
    assert {str(w.message) for w in seen if w.category is DeprecatedNameWarning} == {
        "pipeline parameter 'mlflow_uri' is deprecated: use 'tracking_uri'",
        "pipeline parameter 'em_floor' is deprecated: use 'gate_floor'",
    }
    run = next(r for r in api.requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs")
    assert run["body"]["runtime_config"]["parameters"] == {
        "tracking_uri": "http://mlflow:5000",
        "gate_floor": 0.1,
    }
    params = compiled[1]["root"]["inputDefinitions"]["parameters"]
    assert {"tracking_uri", "gate_floor"} <= set(params) and not {"mlflow_uri", "em_floor"} & set(params)
    with pytest.warns(DeprecatedNameWarning), pytest.raises(ValueError, match="pass only tracking_uri"):
        renamed_parameters({"mlflow_uri": "http://a", "tracking_uri": "http://b"})


def test_submit_without_a_host_or_package_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert main(["pipeline", "submit", "--package", str(tmp_path / "missing.yaml")]) == 2
    assert "no compiled pipeline" in capsys.readouterr().err
    (tmp_path / "p.yaml").write_text("{}")
    assert main(["pipeline", "submit", "--package", str(tmp_path / "p.yaml")]) == 2
    assert "no KFP host" in capsys.readouterr().err


def test_every_step_runs_as_its_images_non_root_user(compiled: tuple[str, dict, dict]) -> None:
    """runAsNonRoot with the uid each Dockerfile's USER sets, so Pod Security "restricted" admits the pods."""
    import re

    from pipelines.mem1_pipeline import ClusterOptions

    def image_uid(dockerfile: str) -> int:
        users = re.findall(r"^USER (\d+):(\d+)$", (REPO / "images" / dockerfile).read_text(), re.M)
        assert len(users) == 1 and users[0][0] == users[0][1], f"{dockerfile}: one USER uid:gid, same ids"
        return int(users[0][0])

    cluster = ClusterOptions()
    assert (cluster.base_uid, cluster.trainer_uid) == (
        image_uid("base.Dockerfile"),
        image_uid("trainer.Dockerfile"),
    )
    _, spec, platform = compiled
    executors = {k.removeprefix("exec-") for k in spec["deploymentSpec"]["executors"]}
    assert executors >= {*GPU_STEPS, "compose", "register", "prepare-run", "finish-run"}
    for step in sorted(executors):
        want = cluster.trainer_uid if step in GPU_STEPS else cluster.base_uid
        ctx = platform[f"exec-{step}"].get("securityContext")
        # the compiler writes the int64 ids as strings (protobuf JSON)
        assert ctx == {"runAsUser": str(want), "runAsGroup": str(want), "runAsNonRoot": True}, (step, ctx)
