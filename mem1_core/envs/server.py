"""The retrieval HTTP server and its client, in the reference implementation's API format.

`POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}` answers
`{"result": [[{"document": {"id", "contents", "title"}, "score"}, ...], ...]}` (one list per query),
so existing MEM1 / Search-R1 retrieval servers and this one are interchangeable. `GET /healthz` says
whether it is up. `RetrievalClient` is itself a `SearchBackend`: an environment does not know whether
search runs in-process or across the network, and the client rides out a server restart by retrying
connection errors and 5xx answers with exponential backoff.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mem1_core.data.types import Document
from mem1_core.envs.retrieval import Hit, SearchBackend

MAX_TOPK = 100
MAX_QUERIES = 256
MAX_QUERY_CHARS = 4_000


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queries: list[str] = Field(..., min_length=1, max_length=MAX_QUERIES)
    topk: int = Field(3, ge=1, le=MAX_TOPK)
    return_scores: bool = True

    @field_validator("queries")
    @classmethod
    def _queries_not_blank(cls, value: list[str]) -> list[str]:
        for i, q in enumerate(value):
            if not q.strip():
                raise ValueError(f"queries[{i}] is empty")
            if len(q) > MAX_QUERY_CHARS:
                raise ValueError(f"queries[{i}] is longer than {MAX_QUERY_CHARS} characters")
        return value


def _document_json(doc: Document) -> dict[str, str]:
    return {"id": doc.id, "contents": doc.contents, "title": doc.title}


def create_app(backend: SearchBackend, n_documents: int | None = None) -> FastAPI:
    """A FastAPI app serving `backend`; bad requests get 400 with a message naming the field."""
    app = FastAPI(title="mem1 retrieval", version="1")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        return JSONResponse(status_code=400, content={"error": "; ".join(problems)})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "documents": n_documents}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> dict[str, Any]:
        # A sync endpoint: FastAPI runs it in its thread pool, so concurrent requests overlap.
        results = backend.search(req.queries, req.topk)
        if req.return_scores:
            out = [
                [{"document": _document_json(h.document), "score": h.score} for h in hits] for hits in results
            ]
        else:
            out = [[_document_json(h.document) for h in hits] for hits in results]
        return {"result": out}

    return app


def serve(
    backend: SearchBackend, host: str = "127.0.0.1", port: int = 8000, n_documents: int | None = None
) -> None:
    """Serve `backend` until interrupted (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(backend, n_documents), host=host, port=port, log_level="info")


@dataclass
class BackgroundServer:
    """A server running in a daemon thread (tests, notebooks, in-pod sidecars); `stop()` ends it."""

    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(
    backend: SearchBackend, host: str = "127.0.0.1", port: int = 0, n_documents: int | None = None
) -> BackgroundServer:
    """Start a real uvicorn server in a thread; port 0 picks a free port. Returns once it listens."""
    import uvicorn

    config = uvicorn.Config(create_app(backend, n_documents), host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"retrieval-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"retrieval server on {host}:{port} did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(server, thread, host, int(bound))


class RetrievalError(RuntimeError):
    """The server refused a request (4xx) or stayed unreachable after every retry."""


def _parse_document(d: dict[str, Any]) -> Document:
    contents = str(d.get("contents", ""))
    title = d.get("title")
    if title is None:  # reference servers send only '"Title"\ntext'
        first, _, rest = contents.partition("\n")
        title, text = first.strip().strip('"'), rest
    else:
        prefix = f'"{title}"\n'
        text = contents[len(prefix) :] if contents.startswith(prefix) else contents
    return Document(str(d.get("id", "")), str(title), text)


class RetrievalClient:
    """HTTP client of a retrieval server; a SearchBackend, safe to share between threads."""

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        batch_size: int = MAX_QUERIES,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                resp = self._session().request(method, self.url + path, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = f"{type(e).__name__}: {e}"
                self._local.__dict__.pop("session", None)  # drop pooled connections to a dead server
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:
                raise RetrievalError(f"{self.url}{path}: HTTP {resp.status_code}: {resp.text[:500]}")
            return resp.json()
        raise RetrievalError(f"{self.url}{path}: no answer after {self.retries + 1} attempts ({last})")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        # Blank queries match nothing in-process; answer them here since the server rejects them.
        results: list[list[Hit]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(queries) if q.strip()]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            payload = {"queries": [queries[i] for i in idx], "topk": topk, "return_scores": True}
            result = self._request("POST", "/retrieve", payload).get("result")
            if not isinstance(result, list) or len(result) != len(idx):
                raise RetrievalError(
                    f"{self.url}/retrieve: expected {len(idx)} result lists, got {result!r:.200}"
                )
            for i, hits in zip(idx, result, strict=True):
                results[i] = [Hit(_parse_document(h["document"]), float(h.get("score", 0.0))) for h in hits]
        return results
