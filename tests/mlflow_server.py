"""A real `mlflow server` on 127.0.0.1 for tests: SQLite backend, local proxied artifacts, free port.

Import the fixture into a test module with `from mlflow_server import mlflow_server  # noqa: F401`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait on /health; raise with its log if it never comes up."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log = (root / "server.log").open("wb")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_bin),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(artifacts),
        "--default-artifact-root",
        "mlflow-artifacts:/",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()}"
            )
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(
        f"mlflow server did not answer /health in {STARTUP_SECONDS}s:\n{(root / 'server.log').read_text()}"
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its uvicorn workers: the process group this helper started for it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh real MLflow server for this test module."""
    proc, url = start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------------------------
# Tiny assets for the registry and evaluation tests: a composed data dir and saved tiny models.

SMALL_WORLD = {"seed": 0, "n_people": 24, "n_films": 8, "n_cities": 4, "n_companies": 4}


def make_data_dir(out: Path, eval_objectives: tuple[int, ...] = (1, 2), n_eval_tasks: int = 2) -> Path:
    """A small composed data dir (train/eval parquet, corpus.jsonl, manifest.json) via data.compose."""
    from mem1_core.config import ComposeConfig
    from mem1_core.data import compose

    cfg = ComposeConfig.model_validate(
        {
            "world": SMALL_WORLD,
            "train_objectives": [2],
            "eval_objectives": list(eval_objectives),
            "n_train_tasks": 8,
            "n_eval_tasks": n_eval_tasks,
        }
    )
    compose.run(cfg, out)
    return out


def make_model_dir(out: Path, data_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 model with a BPE tokenizer trained on the corpus, saved by models.save_model."""
    import json

    from mem1_core.agent.tags import DEFAULT_GRAMMAR
    from mem1_core.config import TinyModelConfig
    from mem1_core.models import build_tiny_model, save_model, train_tokenizer

    texts = [json.loads(line)["contents"] for line in (data_dir / "corpus.jsonl").read_text().splitlines()]
    tokenizer = train_tokenizer(texts, vocab_size=400, grammar=DEFAULT_GRAMMAR)
    cfg = TinyModelConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=400,
    )
    model = build_tiny_model(cfg, tokenizer, seed=seed)
    return save_model(model, tokenizer, out, DEFAULT_GRAMMAR)
