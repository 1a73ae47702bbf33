"""Hybrid retrieval: BM25 and dense rankings fused by reciprocal rank (RRF).

RRF scores a passage by sum over rankings of 1 / (k + rank): it needs no calibration between BM25's
unbounded scores and cosine similarities, and a passage found by both rankers rises above one found by
only one, which is what multi-hop questions (one lexical hop, one paraphrased hop) need.
"""

from __future__ import annotations

from mem1_core.retrieval.base import Hit, SearchBackend


class HybridBackend:
    """Reciprocal rank fusion of several backends over the same corpus; ties break by first appearance
    (the first backend's ranking first), so results are deterministic."""

    def __init__(self, backends: list[SearchBackend], rrf_k: int = 60, candidates: int = 50) -> None:
        if not backends:
            raise ValueError("HybridBackend needs at least one backend")
        self.backends = backends
        self.rrf_k = rrf_k
        self.candidates = candidates

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        depth = max(topk, self.candidates)
        rankings = [b.search(queries, depth) for b in self.backends]
        results: list[list[Hit]] = []
        for q in range(len(queries)):
            fused: dict[str, float] = {}
            docs: dict[str, Hit] = {}
            for ranking in rankings:
                for rank, hit in enumerate(ranking[q], start=1):
                    key = hit.document.id
                    fused[key] = fused.get(key, 0.0) + 1.0 / (self.rrf_k + rank)
                    docs.setdefault(key, hit)
            first_seen = {key: n for n, key in enumerate(docs)}
            best = sorted(fused, key=lambda key: (-fused[key], first_seen[key]))[:topk]
            results.append([Hit(docs[key].document, fused[key]) for key in best])
        return results
