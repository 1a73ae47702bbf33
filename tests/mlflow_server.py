"""A real `mlflow server` on 127.0.0.1 for tests: SQLite (or a given) backend, local proxied artifacts,
free port.

Import the fixture into a test module with `from mlflow_server import mlflow_server  # noqa: F401`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    root: Path, backend_store_uri: str | None = None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server (SQLite under `root` unless `backend_store_uri` says otherwise; on `port`, else a
    free one, e.g. to restart it where its clients point) and wait on /health; raise with its log if it
    never comes up."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log = (root / "server.log").open("ab")
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
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
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
# A proxy in front of the server that answers 503 to chosen requests: MLflow faults, for real.

_REQUEST_DROP = ("host", "content-length")
_HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "content-encoding")


class Proxy503:
    """A transparent HTTP proxy to `upstream` that answers 503 to the first `failures` requests and to
    every request `refuse(method, path)` picks; `seen` counts requests, `refused` the 503 answers.

    Use as a context manager: it serves on a free 127.0.0.1 port (`url`) until the block ends.
    """

    def __init__(
        self, upstream: str, failures: int = 0, refuse: Callable[[str, str], bool] | None = None
    ) -> None:
        self.upstream = upstream
        self.failures = failures
        self.refuse = refuse
        self.seen = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _should_refuse(self, method: str, path: str) -> bool:
        with self._lock:
            self.seen += 1
            fail = self.seen <= self.failures or (self.refuse is not None and self.refuse(method, path))
            self.refused += fail
        return fail

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self._body()
                if proxy._should_refuse(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "transfer-encoding")
                }
                r = requests.request(
                    self.command, proxy.upstream + self.path, data=body, headers=headers, timeout=60
                )
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def _body(self) -> bytes:
                """The request body, also when chunked (how requests uploads an empty file)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the end
                    pass
                return b"".join(parts)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> Proxy503:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


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

    from mem1_core.config import TinyModelConfig
    from mem1_core.models import build_tiny_model, save_model, train_tokenizer
    from mem1_core.protocol.tags import DEFAULT_GRAMMAR

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
