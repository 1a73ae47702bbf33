"""A one-machine stand-in for the cluster side of a TrainJob: the API server and the Trainer's torch plugin.

`LocalTrainJobOperator` is an HTTP server on 127.0.0.1 that the real kubernetes client (through a
kubeconfig) creates and watches TrainJobs on. For each TrainJob it does what the Kubeflow Trainer does
with the `torch-distributed` runtime: start `numNodes` copies of the trainer container's command and
args, one per "node", each with the container's env plus the PET_* variables the torch plugin injects
(PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK = the node's index, PET_MASTER_ADDR/PORT = node 0),
which torchrun reads as its --nnodes, --nproc-per-node, --node-rank and --master-addr/port. Node 0's
torchrun agent hosts the c10d TCPStore the agents rendezvous on, here on a free local port rather than
the headless service's 29400. The job is Complete when every node exits 0, else Failed with the exit
codes. The nodes share this machine's filesystem, as the pods share the workspace volume.

`RECORD_WRITES_SITE` is a sitecustomize module: put its directory first on a worker's PYTHONPATH (and
tests/ after the repo) and each torchrun worker records which saving functions it called
(tests/write_recorder.py; they still save), written at exit
to $RECORD_WRITES_DIR/rank<RANK>.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/"

RECORD_WRITES_SITE = textwrap.dedent(
    """
    import os

    if "LOCAL_RANK" in os.environ and os.environ.get("RECORD_WRITES_DIR"):  # a torchrun worker
        import atexit, json
        from pathlib import Path

        from write_recorder import record_writes

        _writes = record_writes()

        def _report():
            path = Path(os.environ["RECORD_WRITES_DIR"]) / f"rank{os.environ['RANK']}.json"
            path.write_text(json.dumps({"writes": _writes}))

        atexit.register(_report)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve(command: list[str]) -> list[str]:
    """`torchrun` as installed beside this interpreter (a container finds it on PATH)."""
    found = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(command[0])
    if found is None:
        raise FileNotFoundError(f"{command[0]} is neither beside {sys.executable} nor on PATH")
    return [found, *command[1:]]


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler with the replies a Kubernetes API server gives: JSON objects, and watches
    as JSON lines."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_watch(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()

    def send_event(self, kind: str, obj: dict[str, Any]) -> None:
        self.wfile.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())
        self.wfile.flush()


class BackgroundHTTPServer:
    """An HTTP server on a free 127.0.0.1 port, served by a daemon thread while its `with` block runs;
    `close` is what a subclass releases before the server stops."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        self.httpd.shutdown()
        self.httpd.server_close()

    def close(self) -> None:
        pass


class LocalTrainJobOperator(BackgroundHTTPServer):
    """Creates, runs and reports TrainJobs as node processes on this machine (see the module docstring)."""

    def __init__(self, base_env: dict[str, str], cwd: Path, log_dir: Path, timeout_s: float = 600) -> None:
        self.base_env, self.cwd, self.log_dir, self.timeout_s = base_env, cwd, log_dir, timeout_s
        self.created: list[dict[str, Any]] = []
        self.node_env: list[dict[str, str]] = []
        self.node_commands: list[list[str]] = []
        self.exit_codes: list[int] = []
        self.conditions: list[dict[str, str]] = [{"type": "Created", "status": "True", "reason": "Created"}]
        self.done = threading.Event()
        self.procs: list[subprocess.Popen[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        operator = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                operator.created.append(body)
                threading.Thread(target=operator._run, args=(body,), daemon=True).start()
                self.send_json(201, body)

            def do_DELETE(self) -> None:
                operator.stop()
                self.send_json(200, {"kind": "Status", "status": "Success"})

            def do_GET(self) -> None:  # a watch on one TrainJob: its state now, then when it ends
                url = urlparse(self.path)
                name = parse_qs(url.query)["fieldSelector"][0].split("=", 1)[1]
                obj = next(o for o in operator.created if o["metadata"]["name"] == name)
                self.start_watch()
                self.send_event("ADDED", {**obj, "status": {"conditions": list(operator.conditions)}})
                if operator.done.wait(operator.timeout_s):
                    self.send_event("MODIFIED", {**obj, "status": {"conditions": list(operator.conditions)}})

        super().__init__(Handler)

    def close(self) -> None:
        self.stop()
        self.done.set()

    def stop(self) -> None:
        """Kill the nodes this operator started: each agent's process group (the agent and its workers)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose cluster is this server (the launching pod's client reads it)."""
        server = self.url
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server}}],
            "users": [{"name": "test", "user": {"token": "none"}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "test"}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    def node_log(self, index: int) -> str:
        return (self.log_dir / f"node{index}.log").read_text(encoding="utf-8", errors="replace")

    def _run(self, job: dict[str, Any]) -> None:
        try:
            trainer = job["spec"]["trainer"]
            nodes = int(trainer["numNodes"])
            container_env = {e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e}
            master = {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
            command = resolve([*trainer["command"], *trainer["args"]])
            for index in range(nodes):
                env = {**self.base_env, **container_env, **master}
                env |= {
                    "PET_NNODES": str(nodes),
                    "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                    "PET_NODE_RANK": str(index),
                }
                self.node_env.append(env)
                self.node_commands.append(command)
                with (self.log_dir / f"node{index}.log").open("wb") as log:
                    self.procs.append(
                        subprocess.Popen(
                            command,
                            cwd=self.cwd,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,  # a group of its own, so `stop` ends its workers too
                        )
                    )
            for proc in self.procs:
                try:
                    self.exit_codes.append(proc.wait(self.timeout_s))
                except subprocess.TimeoutExpired:
                    self.stop()
                    self.exit_codes.append(proc.wait())
            if all(rc == 0 for rc in self.exit_codes):
                final = {"type": "Complete", "status": "True", "reason": "JobSucceeded", "message": ""}
            else:
                codes = ", ".join(f"node {i} exited {rc}" for i, rc in enumerate(self.exit_codes))
                final = {"type": "Failed", "status": "True", "reason": "NodeFailed", "message": codes}
        except Exception as e:  # a broken manifest: fail the job rather than leave the watch waiting
            final = {"type": "Failed", "status": "True", "reason": "OperatorError", "message": repr(e)}
        self.conditions.append(final)
        self.done.set()
