"""The protocol every retriever implements, and the hit it returns.

Environments only see `SearchBackend.search(queries, topk)`, so the in-process BM25 index, the HTTP
client of a retrieval server and any dense retriever are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mem1_core.data.types import Document

MAX_QUERIES = 256  # queries per /retrieve request: the server's limit, the client's batch size


@dataclass(frozen=True)
class Hit:
    document: Document
    score: float


class SearchBackend(Protocol):
    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        """One ranked list of at most `topk` hits per query, best first."""
        ...
