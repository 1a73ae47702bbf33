"""BM25 over the synthetic world: finds the document a question is about; deterministic, batched."""

from __future__ import annotations

import pytest

from mem1_core.config import WorldConfig
from mem1_core.data.types import Document
from mem1_core.data.world import build_world
from mem1_core.retrieval.base import Hit
from mem1_core.retrieval.bm25 import BM25Backend


@pytest.fixture(scope="module")
def world_and_index():  # type: ignore[no-untyped-def]
    world = build_world(WorldConfig())
    return world, BM25Backend(world.documents)


def _recall(index: BM25Backend, questions, doc_pos: int, k: int = 3) -> float:  # type: ignore[no-untyped-def]
    results = index.search([q.question for q in questions], k)
    found = sum(
        q.supporting_doc_ids[doc_pos] in {h.document.id for h in r}
        for q, r in zip(questions, results, strict=True)
    )
    return found / len(questions)


def test_one_hop_supporting_document_in_top3(world_and_index) -> None:  # type: ignore[no-untyped-def]
    world, index = world_and_index
    questions = world.questions(hops=[1])
    recall = _recall(index, questions, 0)
    print(f"BM25 recall@3 on {len(questions)} 1-hop questions: {recall:.4f}")
    assert recall >= 0.95


def test_two_hop_first_document_in_top3(world_and_index) -> None:  # type: ignore[no-untyped-def]
    world, index = world_and_index
    questions = world.questions(hops=[2])
    recall = _recall(index, questions, 0)
    print(f"BM25 recall@3 of the first document on {len(questions)} 2-hop questions: {recall:.4f}")
    assert recall >= 0.9


def test_batched_equals_one_by_one_and_ranked(world_and_index) -> None:  # type: ignore[no-untyped-def]
    world, index = world_and_index
    queries = [q.question for q in world.questions(limit=40, seed=2)]
    batched = index.search(queries, 5)
    assert batched == [index.search([q], 5)[0] for q in queries]
    for hits in batched:
        assert 1 <= len(hits) <= 5
        assert all(isinstance(h, Hit) and h.score > 0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_titles_are_indexed_and_ties_break_by_corpus_order() -> None:
    docs = [
        Document("a", "Zorblat", "nothing here"),
        Document("b", "Other", "some words"),
        Document("c", "Twin", "identical text"),
        Document("d", "Twin", "identical text"),
    ]
    index = BM25Backend(docs)
    assert [h.document.id for h in index.search(["zorblat"], 3)[0]] == ["a"]
    assert [h.document.id for h in index.search(["identical twin"], 1)[0]] == ["c"]
    assert [h.document.id for h in index.search(["identical twin"], 10)[0]] == ["c", "d"]


def test_queries_without_known_terms_return_nothing() -> None:
    index = BM25Backend([Document("a", "Alpha", "beta gamma"), Document("b", "Delta", "epsilon")])
    assert index.search(["", "the of and", "unknownword"], 3) == [[], [], []]
    assert index.search([], 3) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one document"):
        BM25Backend([])
    with pytest.raises(ValueError, match="topk"):
        BM25Backend([Document("a", "Alpha", "beta")]).search(["beta"], 0)
    with pytest.raises(ValueError, match="no searchable words"):
        BM25Backend([Document("a", "A", "the")])
