"""The retrieval HTTP server, in the reference implementation's API format.

`POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}` answers
`{"result": [[{"document": {"id", "contents", "title"}, "score"}, ...], ...]}` (one list per query),
so existing MEM1 / Search-R1 retrieval servers and this one are interchangeable. `GET /healthz` says
whether it is up. Its client is `retrieval.client.RetrievalClient`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mem1_core.data.types import Document
from mem1_core.retrieval.base import MAX_QUERIES, SearchBackend

MAX_TOPK = 100
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
    import uvicorn  # lazy: only to serve; create_app (the ASGI app, its tests) does not need it

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
    import uvicorn  # lazy: only to serve; create_app (the ASGI app, its tests) does not need it

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
