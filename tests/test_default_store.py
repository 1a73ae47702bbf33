"""One default MLflow store, and errors a person can act on from `mem1 agent`.

With MLFLOW_TRACKING_URI unset every command reads and writes sqlite:///<cwd>/runs/mlflow.db, where
`make demo` registers; the CLI runs here in a fresh process from a temp cwd that has such a store.
An unknown model name, alias or version is one `error:` line and exit 2; a tracking server that is
down is one `error:` line naming its URI, within about 30 s (bounded retries), and exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

from mem1_core.config import PipelineConfig
from mem1_core.tracking import default_tracking_uri, resolve_tracking_uri


def test_one_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    want = f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert default_tracking_uri() == resolve_tracking_uri() == want
    assert resolve_tracking_uri(PipelineConfig().run_dir) == want, "the configs' default run_dir"
    assert resolve_tracking_uri("elsewhere", "http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("runs", "http://mlflow:5000") == "http://env:5000"


def mem1_agent(
    model: str, cwd: Path, uri: str | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mem1_core.cli", "agent", "--model", model, "--question", "Who?"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc, time.monotonic() - started


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def store_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cwd whose default store (runs/mlflow.db) has a model `mem1-agent` with no version yet."""
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "runs").mkdir()
    uri = f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("mem1-agent")
    return cwd


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("models:/mem1-agent@champion", "model 'mem1-agent' has no alias 'champion'"),
        ("models:/mem1-agent/7", "model 'mem1-agent' has no version 7"),
        ("models:/no-such-agent@champion", "no registered model 'no-such-agent'"),
    ],
)
def test_unknown_model_one_error_line_exit_2(store_cwd: Path, model: str, says: str) -> None:
    proc, _ = mem1_agent(model, store_cwd)
    line = _one_error_line(proc)
    assert proc.returncode == 2
    # found in the default store under the cwd, which the message names
    assert says in line and f"sqlite:///{store_cwd / 'runs' / 'mlflow.db'}" in line
    if "no-such" in model:
        assert "registered: mem1-agent" in line


def test_no_store_yet_says_run_make_demo(tmp_path: Path) -> None:
    proc, _ = mem1_agent("models:/mem1-agent@champion", tmp_path)
    assert proc.returncode == 2 and "run `make demo` first" in _one_error_line(proc)
    assert not (tmp_path / "runs").exists(), "reading must not create a store"


def test_down_server_one_error_line_within_30_s(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc, seconds = mem1_agent("models:/mem1-agent@champion", tmp_path, uri)
    line = _one_error_line(proc)
    assert proc.returncode == 1 and uri in line and "unreachable" in line
    assert seconds < 60, f"took {seconds:.1f}s"
    print(f"down server reported in {seconds:.1f}s")
