"""Load on the retrieval server: 200 concurrent clients for 30 s, no error allowed.

The server is the real one (`mem1 serve-retrieval`: uvicorn + FastAPI, BM25 over the synthetic world's
documents) in its own process on 127.0.0.1. The clients are 200 threads spread over 4 processes (so the
client side is not one GIL), each with its own keep-alive connection, sending one question per request
back to back until the deadline. Every request has a timeout, the workers stop at the deadline and the
server is terminated, so the benchmark always ends by itself.

Reports requests, errors, latency p50/p90/p99/max and throughput -> bench/results/retrieval_load.md.
Run: .venv/bin/python bench/bench_retrieval_load.py   (MEM1_LOAD_SECONDS / MEM1_LOAD_CLIENTS to change)
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLIENTS = int(os.environ.get("MEM1_LOAD_CLIENTS", "200"))
SECONDS = float(os.environ.get("MEM1_LOAD_SECONDS", "30"))
PROCESSES = 4
REQUEST_TIMEOUT = 30.0
TOPK = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client_process(url: str, n_threads: int, deadline: float, queries: list[str], seed: int) -> dict:
    """n_threads clients hammering `url` until `deadline` (time.time()); latencies in ms, errors by kind."""
    import requests

    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        session = requests.Session()
        mine: list[float] = []
        bad: dict[str, int] = {}
        start.wait()
        while time.time() < deadline:
            payload = {"queries": [rng.choice(queries)], "topk": TOPK, "return_scores": True}
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/retrieve", json=payload, timeout=REQUEST_TIMEOUT)
                ok = r.status_code == 200 and len(r.json()["result"]) == 1
                kind = "" if ok else f"HTTP {r.status_code}"
            except Exception as e:  # every failure counts; the kind is reported
                kind = type(e).__name__
            if kind:
                bad[kind] = bad.get(kind, 0) + 1
            else:
                mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)
            for key, v in bad.items():
                errors[key] = errors.get(key, 0) + v

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def _start_server(corpus: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    import requests

    cmd = [
        sys.executable,
        "-m",
        "mem1_core.cli",
        "serve-retrieval",
        "--corpus",
        str(corpus),
        "--port",
        str(port),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"retrieval server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("retrieval server did not come up in 120 s")


def drive_clients(
    url: str, queries: list[str], seconds: float, clients: int = CLIENTS
) -> tuple[list[dict[str, Any]], float]:
    """`clients` keep-alive clients over PROCESSES processes for `seconds`: each process's latencies and
    errors, and the measured window's wall time (the workers get 5 s to start before it opens)."""
    per = [clients // PROCESSES + (i < clients % PROCESSES) for i in range(PROCESSES)]
    deadline = time.time() + 5 + seconds
    with ProcessPoolExecutor(PROCESSES) as pool:
        futures = [pool.submit(_client_process, url, n, deadline, queries, i) for i, n in enumerate(per)]
        t_start = deadline - seconds
        parts = [f.result(timeout=seconds + 180) for f in futures]
    return parts, time.time() - t_start


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(results_dir: Path) -> dict[str, float]:
    import psutil

    from mem1_core.config import WorldConfig
    from mem1_core.data.world import build_world

    world = build_world(WorldConfig())  # the embedded default world
    queries = [q.question for q in world.questions(limit=500, seed=0)]
    with tempfile.TemporaryDirectory(prefix="mem1-load-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in world.documents), encoding="utf-8")
        port = _free_port()
        server = _start_server(corpus, port, Path(tmp) / "server.log")
        try:
            server_ps = psutil.Process(server.pid)
            rss_before = server_ps.memory_info().rss / 2**20
            parts, wall = drive_clients(f"http://127.0.0.1:{port}", queries, SECONDS)
            rss_after = server_ps.memory_info().rss / 2**20
            alive = server.poll() is None
        finally:
            stop_server(server)

    lat = sorted(x for p in parts for x in p["latencies"])
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    n_err = sum(errors.values())
    results = {
        "clients": float(CLIENTS),
        "seconds": round(wall, 2),
        "requests": float(len(lat) + n_err),
        "errors": float(n_err),
        "throughput_rps": round(len(lat) / wall, 1),
        "latency_p50_ms": round(_percentile(lat, 50), 1),
        "latency_p90_ms": round(_percentile(lat, 90), 1),
        "latency_p99_ms": round(_percentile(lat, 99), 1),
        "latency_max_ms": round(lat[-1], 1) if lat else float("nan"),
        "server_rss_mb_before": round(rss_before, 1),
        "server_rss_mb_after": round(rss_after, 1),
        "server_alive": float(alive),
        "documents": float(len(world.documents)),
    }
    _write_report(results_dir, results, errors)
    return results


def _write_report(results_dir: Path, r: dict[str, float], errors: dict[str, int]) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    cpu = os.cpu_count()
    lines = [
        "# Retrieval server under load",
        "",
        f"`mem1 serve-retrieval` (uvicorn, BM25 over {r['documents']:.0f} synthetic-world documents) on "
        f"127.0.0.1; {r['clients']:.0f} concurrent keep-alive clients ({PROCESSES} processes) sending one "
        f"question per request (top-{TOPK}) back to back for {r['seconds']:.1f} s. Machine: {cpu} CPU cores "
        "shared by clients and server (numbers are for this machine, not a capacity claim).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| requests | {r['requests']:.0f} |",
        f"| errors | {r['errors']:.0f} {'(' + json.dumps(errors) + ')' if errors else ''} |",
        f"| throughput | {r['throughput_rps']:.1f} req/s |",
        f"| latency p50 / p90 / p99 / max | {r['latency_p50_ms']:.1f} / {r['latency_p90_ms']:.1f} / "
        f"{r['latency_p99_ms']:.1f} / {r['latency_max_ms']:.1f} ms |",
        f"| server RSS before / after | {r['server_rss_mb_before']:.1f} / "
        f"{r['server_rss_mb_after']:.1f} MB |",
        f"| server alive at the end | {'yes' if r['server_alive'] else 'NO'} |",
        "",
        "Latency is client-side (includes queueing: with 200 clients and a few cores most of it is waiting "
        "for a worker thread, so p50 ≈ clients / throughput).",
        "",
    ]
    (results_dir / "retrieval_load.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    out = main(REPO / "bench" / "results")
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["errors"] == 0 and out["server_alive"] else 1)
