"""The synthetic world: deterministic, unique names, every question answerable from its documents."""

from __future__ import annotations

import re

import pytest

from mem1_core.config import WorldConfig
from mem1_core.data.world import build_world
from mem1_core.protocol.scoring import exact_match, f1, normalize_answer

SMALL = WorldConfig(seed=3, n_people=60, n_films=30, n_cities=10, n_companies=12)


def test_same_seed_same_world_and_questions() -> None:
    a, b = build_world(SMALL), build_world(SMALL)
    assert a.documents == b.documents
    assert a.questions(limit=50, seed=1) == b.questions(limit=50, seed=1)
    other = build_world(SMALL.model_copy(update={"seed": 4}))
    assert other.documents != a.documents


def test_counts_ids_and_unique_names() -> None:
    w = build_world(SMALL)
    assert len(w.documents) == 60 + 30 + 10 + 12
    assert len({d.id for d in w.documents}) == len(w.documents)
    titles = [d.title for d in w.documents]
    assert len(set(titles)) == len(titles)
    # Each entity owns one name word that no other entity uses, so lexical search can single it out.
    words = [re.findall(r"\w+", t.lower()) for t in titles]
    counts: dict[str, int] = {}
    for ws in words:
        for x in set(ws):
            counts[x] = counts.get(x, 0) + 1
    assert all(any(counts[x] == 1 for x in ws) for ws in words)


def test_one_hop_answer_is_in_its_document() -> None:
    w = build_world(SMALL)
    qs = w.questions(hops=[1])
    assert qs and all(q.hops == 1 and len(q.supporting_doc_ids) == 1 for q in qs)
    for q in qs:
        doc = w.document(q.supporting_doc_ids[0])
        assert doc.title in q.question
        assert q.answers[0] in doc.text
        assert q.supporting_titles == (doc.title,)


def test_two_hop_chain_through_the_bridge_document() -> None:
    w = build_world(SMALL)
    qs = w.questions(hops=[2])
    assert qs and all(q.hops == 2 for q in qs)
    for q in qs:
        first, second = (w.document(i) for i in q.supporting_doc_ids)
        assert first.title in q.question
        assert second.title not in q.question
        assert second.title in first.text  # the first document names the bridge entity
        assert q.answers[0] in second.text
    example = next(q for q in qs if q.question.startswith("In which city was the director of the film"))
    assert example.question.endswith("born?")


def test_questions_limit_hops_and_errors() -> None:
    w = build_world(SMALL)
    all_q = w.questions()
    assert {q.hops for q in all_q} == {1, 2}
    assert len({q.id for q in all_q}) == len(all_q)
    assert w.questions(limit=7, seed=5) == w.questions(seed=5)[:7]
    with pytest.raises(ValueError, match="1 or 2 hops"):
        w.candidates([3])


def test_answers_score_against_world_gold() -> None:
    q = build_world(SMALL).questions(limit=1)[0]
    assert exact_match(q.answers[0].upper() + ".", q.answers) == 1.0
    assert f1("nothing", q.answers) == 0.0
    assert normalize_answer(q.answers[0]) != ""


def test_builds_a_100k_document_world() -> None:
    cfg = WorldConfig(seed=0, n_people=60_000, n_films=25_000, n_cities=5_000, n_companies=10_000)
    w = build_world(cfg)
    assert len(w.documents) == 100_000
    assert len({d.title for d in w.documents}) == 100_000
    qs = w.questions(limit=200)
    assert len(qs) == 200 and all(q.answers[0] for q in qs)
