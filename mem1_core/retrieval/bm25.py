"""Lexical BM25 over titles + text (bm25s): the in-process SearchBackend of the embedded default."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mem1_core.data.types import Document
from mem1_core.retrieval.base import Hit


class BM25Backend:
    """Lexical BM25 (bm25s, English stopwords, no stemming) over each document's title and text.

    Documents that share no term with a query are not returned, so a hopeless query gets fewer
    than `topk` hits instead of arbitrary zero-score passages. Ties break by corpus order, so results
    are deterministic. Searching is read-only and safe to call from several threads.
    """

    def __init__(self, documents: Sequence[Document], show_progress: bool = False) -> None:
        import bm25s  # lazy: ~0.4 s (scipy) to import, only when an index is built, never for a client

        if not documents:
            raise ValueError("BM25Backend needs at least one document")
        self.documents = list(documents)
        self._bm25s = bm25s
        tokens = bm25s.tokenize(
            [d.contents for d in self.documents], stopwords="en", show_progress=show_progress
        )
        if not tokens.vocab:
            raise ValueError(
                "BM25Backend: the documents contain no searchable words (all stopwords or empty)"
            )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=show_progress)

    def __len__(self) -> int:
        return len(self.documents)

    def _query_token_ids(self, queries: list[str]) -> list[list[int]]:
        tokenized = self._bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        return [self._index.get_tokens_ids(list(t)) for t in tokenized]

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        results: list[list[Hit]] = []
        for ids in self._query_token_ids(list(queries)):
            if not ids:
                results.append([])
                continue
            scores = self._index.get_scores_from_ids(ids)
            k = min(topk, len(scores))
            kth = -np.partition(-scores, k - 1)[k - 1]
            above = np.flatnonzero(scores > kth)
            tied = np.flatnonzero(scores == kth)[: k - len(above)]
            cand = sorted([*above.tolist(), *tied.tolist()], key=lambda i: (-float(scores[i]), i))
            results.append([Hit(self.documents[i], float(scores[i])) for i in cand if scores[i] > 0])
        return results
