"""The real retrieval server on 127.0.0.1: same results as in-process, 400s, concurrency, restarts."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from mem1_core.config import WorldConfig
from mem1_core.data.types import Document
from mem1_core.data.world import build_world
from mem1_core.retrieval.base import Hit
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.client import RetrievalClient, RetrievalError, _parse_document
from mem1_core.retrieval.server import start_background


@pytest.fixture(scope="module")
def world_backend():  # type: ignore[no-untyped-def]
    world = build_world(WorldConfig(seed=5, n_people=120, n_films=40, n_cities=15, n_companies=15))
    return world, BM25Backend(world.documents)


@pytest.fixture(scope="module")
def server(world_backend):  # type: ignore[no-untyped-def]
    world, backend = world_backend
    with start_background(backend, n_documents=len(world.documents)) as srv:
        yield srv


def test_health_and_results_equal_in_process(world_backend, server) -> None:  # type: ignore[no-untyped-def]
    world, backend = world_backend
    client = RetrievalClient(server.url)
    assert client.health() == {"status": "ok", "documents": len(world.documents)}
    queries = [q.question for q in world.questions(limit=60, seed=3)] + ["zzqx unknown", "   "]
    for k in (1, 3, 7):
        assert client.search(queries, k) == backend.search(queries, k)
    assert client.search([], 3) == []
    small = RetrievalClient(server.url, batch_size=7)  # several requests for one call
    assert small.search(queries, 3) == backend.search(queries, 3)


def test_reference_wire_format(world_backend, server) -> None:  # type: ignore[no-untyped-def]
    world, _ = world_backend
    doc = world.documents[0]
    body = {"queries": [doc.title, doc.title], "topk": 2, "return_scores": True}
    r = requests.post(f"{server.url}/retrieve", json=body, timeout=10)
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 2 and len(result[0]) == 2
    top = result[0][0]
    assert top["document"]["id"] == doc.id and top["document"]["contents"] == f'"{doc.title}"\n{doc.text}'
    assert isinstance(top["score"], float)
    r = requests.post(f"{server.url}/retrieve", json={**body, "return_scores": False}, timeout=10)
    assert r.json()["result"][0][0]["id"] == doc.id
    # a reference server sends no title: it is read back from contents
    parsed = _parse_document({"id": "x", "contents": '"Some Title"\nbody text'})
    assert parsed == Document("x", "Some Title", "body text")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"queries": [], "topk": 3}, "queries"),
        ({"queries": ["a"], "topk": 0}, "topk"),
        ({"queries": ["a"], "topk": 101}, "topk"),
        ({"queries": ["a"] * 257}, "queries"),
        ({"topk": 3}, "queries"),
        ({"queries": "not a list"}, "queries"),
        ({"queries": [1, 2]}, "queries"),
        ({"queries": ["ok", "  "]}, "queries[1] is empty"),
    ],
)
def test_bad_requests_get_400(server, body, field: str) -> None:  # type: ignore[no-untyped-def]
    r = requests.post(f"{server.url}/retrieve", json=body, timeout=10)
    assert r.status_code == 400
    assert field in r.json()["error"]


def test_malformed_json_and_client_4xx(server) -> None:  # type: ignore[no-untyped-def]
    headers = {"content-type": "application/json"}
    r = requests.post(f"{server.url}/retrieve", data=b"{not json", headers=headers, timeout=10)
    assert r.status_code == 400
    with pytest.raises(RetrievalError, match=r"HTTP 400.*topk"):
        RetrievalClient(server.url, retries=0).search(["city"], 0)


def test_fifty_concurrent_clients(world_backend, server) -> None:  # type: ignore[no-untyped-def]
    world, backend = world_backend
    questions = [q.question for q in world.questions(limit=400, seed=9)]
    expected = dict(zip(questions, backend.search(questions, 3), strict=True))
    n_threads, per_thread = 50, 4
    barrier = threading.Barrier(n_threads)
    answers: dict[tuple[int, int], tuple[list[str], list[list[Hit]]]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        client = RetrievalClient(server.url, timeout=60)
        barrier.wait()
        try:
            for j in range(per_thread):
                start = (t * per_thread + j) * 2 % len(questions)
                qs = questions[start : start + 1 + (t + j) % 3]
                answers[(t, j)] = (qs, client.search(qs, 3))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    assert len(answers) == n_threads * per_thread
    for qs, got in answers.values():
        assert got == [expected[q] for q in qs]


def test_client_survives_a_server_restart(world_backend) -> None:  # type: ignore[no-untyped-def]
    world, backend = world_backend
    query = [world.questions(limit=1)[0].question]
    first = start_background(backend)
    port = first.port
    client = RetrievalClient(first.url, retries=10, backoff=0.05, max_backoff=0.5)
    assert client.search(query, 3) == backend.search(query, 3)
    first.stop()
    restarted: list = []
    timer = threading.Timer(0.6, lambda: restarted.append(start_background(backend, port=port)))
    timer.start()
    try:
        t0 = time.monotonic()
        assert client.search(query, 3) == backend.search(query, 3)  # retried until the server is back
        assert time.monotonic() - t0 >= 0.5
    finally:
        timer.join()
        for srv in restarted:
            srv.stop()


class _Flaky:
    """Fails the first `n` searches (the server answers 500), then works."""

    def __init__(self, inner: BM25Backend, n: int) -> None:
        self.inner, self.left = inner, n

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("transient failure")
        return self.inner.search(queries, topk)


def test_client_retries_5xx_and_gives_up_on_a_dead_server(world_backend) -> None:  # type: ignore[no-untyped-def]
    world, backend = world_backend
    query = [world.documents[3].title]
    flaky = _Flaky(backend, 2)
    with start_background(flaky) as srv:
        assert RetrievalClient(srv.url, retries=3, backoff=0.01).search(query, 2) == backend.search(query, 2)
        flaky.left = 1
        with pytest.raises(RetrievalError, match=r"no answer after 1 attempts.*HTTP 500"):
            RetrievalClient(srv.url, retries=0).search(query, 2)
    dead = RetrievalClient(srv.url, retries=2, backoff=0.01)
    with pytest.raises(RetrievalError, match=r"no answer after 3 attempts.*ConnectionError"):
        dead.search(query, 2)


def test_cli_serve_retrieval_subprocess(tmp_path, world_backend) -> None:  # type: ignore[no-untyped-def]
    import json
    import socket
    import subprocess
    import sys

    world, backend = world_backend
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in world.documents))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = RetrievalClient(f"http://127.0.0.1:{port}", retries=12, backoff=0.25, max_backoff=2.0)
        assert client.health()["documents"] == len(world.documents)
        queries = [q.question for q in world.questions(limit=10, seed=4)]
        assert client.search(queries, 3) == backend.search(queries, 3)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert f"indexing {len(world.documents)} documents" in output
    bad = subprocess.run(
        [*cmd[:-4], "--corpus", str(tmp_path / "nope.jsonl")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope.jsonl: corpus not found" in bad.stderr


def test_evaluation_searches_through_agent_retrieval_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`agent.retrieval_url` sends every search of a step to the server; results equal in-process BM25."""
    from mem1_core.config import AgentConfig, ComposeConfig, EvalConfig
    from mem1_core.data import compose
    from mem1_core.eval import evaluate

    data = tmp_path / "data"
    compose.run(
        ComposeConfig(world=WorldConfig(n_people=60, n_films=20, n_cities=8, n_companies=8), n_eval_tasks=3),
        data,
    )
    corpus = compose.load_corpus(data)
    served: list[int] = []

    class Counting(BM25Backend):
        def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
            served.append(len(queries))
            return super().search(queries, topk)

    agent = AgentConfig(temperature=0.0, topk=2)
    cfg = EvalConfig(agent=agent, objectives=[1, 2], modes=["mem1"], n_tasks_per_objective=3)
    local = evaluate.run(cfg, data, "oracle", tmp_path / "local").rows
    with start_background(Counting(corpus), n_documents=len(corpus)) as srv:
        remote_agent = agent.model_copy(update={"retrieval_url": srv.url})
        remote_cfg = cfg.model_copy(update={"agent": remote_agent})
        remote = evaluate.run(remote_cfg, data, "oracle", tmp_path / "remote")
    assert sum(served) > 0, "the searches went to the server"
    keys = ("objectives", "em", "peak_tokens", "turns")
    assert [{k: r[k] for k in keys} for r in remote.rows] == [{k: r[k] for k in keys} for r in local]

    with start_background(BM25Backend(corpus), n_documents=len(corpus) + 1) as other:
        wrong = agent.model_copy(update={"retrieval_url": other.url})
        refused = rf"serves {len(corpus) + 1} documents but .*corpus\.jsonl has"
        with pytest.raises(RetrievalError, match=refused):
            evaluate.run(cfg.model_copy(update={"agent": wrong}), data, "oracle", tmp_path / "wrong")
