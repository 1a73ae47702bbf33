"""MLflow tracking against a real server and the SQLite default: runs, nesting, failures, retries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import Proxy503, free_port, mlflow_server  # noqa: F401

from mem1_core.config import EvalConfig, PipelineConfig, SFTConfig, TrackingConfig
from mem1_core.tracking import (
    RetryPolicy,
    Tracker,
    TrackingError,
    flatten_params,
    is_transient,
    resolve_tracking_uri,
)

FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.2, max_delay=1.0)


def _log_a_pipeline(tracker: Tracker, tmp_path: Path) -> tuple[str, str]:
    table = tmp_path / "table.md"
    table.write_text("| objectives | em |\n|---|---|\n| 1 | 0.5 |\n")
    with (
        tracker.start_pipeline_run(PipelineConfig(), name="pipeline") as parent,
        tracker.step_run("sft", SFTConfig(), parent_run_id=parent.run_id) as step,
    ):
        for i in range(3):
            step.log({"loss": 2.0 - 0.5 * i, "lr": 1e-3}, i)
        step.log_artifact(table, "reports")
        step.log_dict({"a": 1}, "extra/info.json")
    return parent.run_id, step.run_id


def _check_logged(client: MlflowClient, parent_id: str, step_id: str) -> None:
    parent = client.get_run(parent_id)
    step = client.get_run(step_id)
    assert parent.info.status == "FINISHED" and step.info.status == "FINISHED"
    assert step.data.tags["mlflow.parentRunId"] == parent_id
    assert step.data.tags["mem1.pipeline_run_id"] == parent_id
    assert step.info.experiment_id == parent.info.experiment_id
    # params are the step's whole config, flattened
    assert step.data.params == flatten_params(SFTConfig())
    assert step.data.params["model.tiny.hidden_size"] == "128"
    assert parent.data.params["ppo.agent.mode"] == "mem1"
    history = client.get_metric_history(step_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 2.0),
        (1, 1.5),
        (2, 1.0),
    ]
    top = {f.path for f in client.list_artifacts(step_id)}
    assert {"config.json", "reports", "extra"} <= top
    assert [f.path for f in client.list_artifacts(step_id, "reports")] == ["reports/table.md"]
    local = client.download_artifacts(step_id, "reports/table.md")
    assert "| 1 | 0.5 |" in Path(local).read_text()


def test_flatten_params_dotted_and_json() -> None:
    flat = flatten_params(EvalConfig())
    assert flat["agent.temperature"] == "0.0"
    assert flat["objectives"] == "[1, 2, 4, 8, 16]"
    assert flat["agent.max_turns"] == "null"


def test_server_logs_nested_runs_params_metrics_artifacts(mlflow_server: str, tmp_path: Path) -> None:  # noqa: F811
    tracker = Tracker(mlflow_server, experiment="tracking-test", retry=FAST_RETRY)
    parent_id, step_id = _log_a_pipeline(tracker, tmp_path)
    _check_logged(MlflowClient(tracking_uri=mlflow_server), parent_id, step_id)


def test_failing_step_is_marked_failed(mlflow_server: str) -> None:  # noqa: F811
    tracker = Tracker(mlflow_server, experiment="tracking-fail", retry=FAST_RETRY)
    with pytest.raises(RuntimeError, match="boom"), tracker.step_run("ppo", {"steps": 2}) as step:
        step.log({"reward": 0.1}, 0)
        raise RuntimeError("boom")
    run = MlflowClient(tracking_uri=mlflow_server).get_run(step.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["reward"] == pytest.approx(0.1)


def test_invalid_params_create_no_run(mlflow_server: str) -> None:  # noqa: F811
    tracker = Tracker(mlflow_server, experiment="tracking-invalid", retry=FAST_RETRY)
    with pytest.raises(ValueError, match="over MLflow's"), tracker.step_run("eval", {"huge": "x" * 7000}):
        pass
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tracking-invalid")
    assert exp is None or client.search_runs([exp.experiment_id]) == []


def test_bad_metric_value_is_rejected_before_logging(mlflow_server: str) -> None:  # noqa: F811
    tracker = Tracker(mlflow_server, experiment="tracking-metric", retry=FAST_RETRY)
    with (
        tracker.step_run("sft", {"a": 1}) as step,
        pytest.raises(ValueError, match="'loss' is not a number"),
    ):
        step.log({"ok": 1.0, "loss": "abc"}, 0)  # type: ignore[dict-item]
    # neither metric of the bad batch was logged
    assert MlflowClient(tracking_uri=mlflow_server).get_run(step.run_id).data.metrics == {}


def test_sqlite_default_without_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    uri = resolve_tracking_uri(run_dir)
    assert uri == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    tracker = Tracker.from_config(TrackingConfig(experiment="local"), run_dir, retry=FAST_RETRY)
    assert tracker.tracking_uri == uri
    parent_id, step_id = _log_a_pipeline(tracker, tmp_path)
    _check_logged(MlflowClient(tracking_uri=uri), parent_id, step_id)
    assert (run_dir / "mlflow.db").is_file()
    assert list((run_dir / "mlartifacts").rglob("table.md")), "artifacts live under the run dir"


def test_env_uri_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_tracking_uri(tmp_path, "sqlite:///x.db") == "http://example.invalid:5000"


def test_dead_server_fails_clearly_after_retries() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    tracker = Tracker(uri, experiment="nope", retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(TrackingError) as info, tracker.step_run("sft", {"a": 1}):
        pytest.fail("the body must not run without a server")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert uri in message and "after 3 attempts" in message
    assert elapsed >= 0.2 + 0.4 - 0.05, "backoff delays were waited"
    assert is_transient(info.value.__cause__)


@pytest.fixture()
def flaky_proxy(mlflow_server: str) -> Iterator[Proxy503]:  # noqa: F811
    """Answers 503 to the first 2 requests, then forwards to the real server."""
    with Proxy503(mlflow_server, failures=2) as proxy:
        yield proxy


def test_transient_5xx_is_retried_then_succeeds(flaky_proxy: Proxy503, mlflow_server: str) -> None:  # noqa: F811
    tracker = Tracker(
        flaky_proxy.url, experiment="tracking-flaky", retry=RetryPolicy(attempts=4, initial_delay=0.1)
    )
    with tracker.step_run("compose", {"seed": 3}) as step:
        step.log({"tasks": 12.0}, 0)
    assert flaky_proxy.seen > 2, "the 503 answers were retried"
    run = MlflowClient(tracking_uri=mlflow_server).get_run(step.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "3"}
    assert run.data.metrics == {"tasks": 12.0}
