"""The HTTP client of a retrieval server (this project's or a reference MEM1 / Search-R1 one).

`RetrievalClient` is itself a `SearchBackend`: an environment does not know whether search runs
in-process or across the network, and the client rides out a server restart by retrying connection
errors and 5xx answers with exponential backoff. It needs only `requests`, not the server's FastAPI,
so a registered agent that searches a remote server does not import the server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from mem1_core.data.types import Document
from mem1_core.retrieval.base import MAX_QUERIES, Hit


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
