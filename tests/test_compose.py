"""compose: deterministic N-objective tasks, disjoint splits, corpus and manifest, from any source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mem1_core.config import ComposeConfig, SourceSpec, WorldConfig
from mem1_core.data.compose import collect_items, compose_tasks, load_corpus, load_manifest, load_tasks, run
from mem1_core.data.sources import DataError
from mem1_core.data.world import build_world

SMALL_WORLD = WorldConfig(seed=2, n_people=80, n_films=30, n_cities=10, n_companies=12)


def _cfg(**kw) -> ComposeConfig:  # type: ignore[no-untyped-def]
    base = dict(world=SMALL_WORLD, train_objectives=[1, 2, 3], eval_objectives=[1, 2, 4, 8, 16])
    base.update(n_train_tasks=60, n_eval_tasks=5, seed=7)
    base.update(kw)
    return ComposeConfig(**base)


def _check_tasks(train, evals, cfg: ComposeConfig) -> None:  # type: ignore[no-untyped-def]
    assert len(train) == cfg.n_train_tasks
    assert [t.n_objectives for t in train] == [
        cfg.train_objectives[i % len(cfg.train_objectives)] for i in range(len(train))
    ]
    for n in cfg.eval_objectives:
        assert sum(t.n_objectives == n for t in evals) == cfg.n_eval_tasks
    for t in train + evals:
        qs = t.questions
        assert len(set(qs)) == len(qs), f"question repeated inside {t.id}"
    train_q = {q for t in train for q in t.questions}
    eval_q = {q for t in evals for q in t.questions}
    assert not train_q & eval_q
    assert len({t.id for t in train + evals}) == len(train) + len(evals)


def test_synthetic_compose_writes_everything(tmp_path: Path) -> None:
    cfg = _cfg()
    result = run(cfg, tmp_path / "a")
    out = result.out_dir
    assert {p.name for p in out.iterdir()} == {
        "train.parquet",
        "eval.parquet",
        "corpus.jsonl",
        "manifest.json",
    }
    train, evals = load_tasks(out, "train"), load_tasks(out, "eval")
    _check_tasks(train, evals, cfg)
    # the round trip through parquet loses nothing
    items, _ = collect_items(cfg)
    assert (train, evals) == compose_tasks(items, cfg)
    # 5 tasks x (1+2+4+8+16) = 155 eval questions, all distinct while the pool allows
    assert len({q for t in evals for q in t.questions}) == 155
    corpus = load_corpus(out)
    assert [d.id for d in corpus] == [d.id for d in build_world(SMALL_WORLD).documents]
    ids = {d.id for d in corpus}
    assert all(i in ids for t in train for o in t.objectives for i in o.supporting_doc_ids)
    manifest = load_manifest(out)
    assert manifest["dataset_hash"] == result.dataset_hash and len(result.dataset_hash) == 64
    assert manifest["counts"]["eval_tasks_per_objective"] == {"1": 5, "2": 5, "4": 5, "8": 5, "16": 5}
    assert manifest["config"]["seed"] == 7
    assert {o.hops for t in train for o in t.objectives} == {1, 2}


def test_same_seed_same_hash_other_seed_other_tasks(tmp_path: Path) -> None:
    cfg = _cfg(n_train_tasks=20)
    a, b = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    assert a.dataset_hash == b.dataset_hash
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()
    c = run(_cfg(n_train_tasks=20, seed=8), tmp_path / "c")
    assert c.dataset_hash != a.dataset_hash
    assert load_tasks(tmp_path / "c", "train") != load_tasks(tmp_path / "a", "train")


def test_small_pool_reuses_questions_across_but_never_within_tasks() -> None:
    tiny = WorldConfig(seed=0, n_people=4, n_films=2, n_cities=2, n_companies=2)
    cfg = _cfg(world=tiny, hops=[1], eval_objectives=[16], train_objectives=[8], n_eval_tasks=4)
    items, _ = collect_items(cfg)
    assert len(items) == 4 * 3 + 2 * 3 + 2 * 3 + 2
    train, evals = compose_tasks(items, cfg)
    _check_tasks(train, evals, cfg)
    assert len({q for t in evals for q in t.questions}) == 16  # 4 tasks share a 16-question pool
    with pytest.raises(DataError, match="too few"):
        compose_tasks(items, _cfg(world=tiny, hops=[1], eval_objectives=[32], train_objectives=[2]))


def _write_hotpot(path: Path, n: int) -> None:
    rows = []
    for i in range(n):
        ctx = [[f"Topic {i}", [f"Topic {i} is about thing{i}.", f" Its answer is ans{i}."]],
               ["Shared", ["A paragraph many questions share."]]]  # fmt: skip
        rows.append({"_id": f"h{i}", "question": f"What is topic {i} about?", "answer": f"ans{i}",
                     "supporting_facts": [[f"Topic {i}", 1]], "context": ctx})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_sources_corpus_from_contexts_or_corpus_path(tmp_path: Path) -> None:
    hp = tmp_path / "hp.jsonl"
    _write_hotpot(hp, 30)
    nq = tmp_path / "nq.json"
    nq.write_text(json.dumps([{"question": f"nq question {i}?", "answers": [f"a{i}"]} for i in range(20)]))
    sources = [SourceSpec(kind="hotpotqa", path=str(hp)), SourceSpec(kind="nq", path=str(nq))]
    cfg = _cfg(sources=sources, eval_objectives=[1, 2, 4], n_eval_tasks=2, train_objectives=[2])
    result = run(cfg, tmp_path / "out")
    corpus = load_corpus(result.out_dir)
    assert len(corpus) == 31  # 30 topics + the shared paragraph once
    assert result.manifest["counts"]["sources"] == {"hotpotqa": 30, "nq": 20}
    evals = load_tasks(result.out_dir, "eval")
    ids = {d.id for d in corpus}
    assert all(i in ids for t in evals for o in t.objectives for i in o.supporting_doc_ids)

    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "title": f"Topic {i}", "contents": f'"Topic {i}"\nans{i}'}) + "\n"
            for i in range(30)
        )
    )
    cfg2 = cfg.model_copy(update={"corpus_path": str(corpus_file), "sources": sources[:1]})
    result2 = run(cfg2, tmp_path / "out2")
    assert [d.id for d in load_corpus(result2.out_dir)] == [f"c{i}" for i in range(30)]
    linked = [o for t in load_tasks(result2.out_dir, "train") for o in t.objectives]
    assert all(o.supporting_doc_ids == (f"c{o.item_id[1:]}",) for o in linked)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be"):
        load_tasks(tmp_path, "test")
    with pytest.raises(DataError, match=r"train\.parquet: not found"):
        load_tasks(tmp_path, "train")
    with pytest.raises(DataError, match=r"corpus\.jsonl: not found"):
        load_corpus(tmp_path)


@pytest.mark.realdata
def test_compose_real_hotpotqa_with_its_corpus(tmp_path: Path, shared_data: Path) -> None:
    src = SourceSpec(kind="hotpotqa", path=str(shared_data / "hotpotqa_dev.jsonl"), limit=300)
    cfg = _cfg(sources=[src], corpus_path=str(shared_data / "hotpotqa_dev_corpus.jsonl"),
               train_objectives=[2], eval_objectives=[1, 2, 4], n_eval_tasks=4)  # fmt: skip
    result = run(cfg, tmp_path / "real")
    train, evals = load_tasks(result.out_dir, "train"), load_tasks(result.out_dir, "eval")
    _check_tasks(train, evals, cfg)
    assert result.n_documents == 20_235
    linked = [o for t in train + evals for o in t.objectives]
    share = sum(bool(o.supporting_doc_ids) and o.supporting_doc_ids[0].startswith("hp") for o in linked)
    print(f"supporting titles linked to corpus ids: {share}/{len(linked)}")
    assert share / len(linked) > 0.95


def test_cli_compose_prints_summary_and_maps_data_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from mem1_core.cli import main

    out = tmp_path / "cli"
    overrides = ["--set", "compose.n_train_tasks=8", "--set", "compose.eval_objectives=[1,2]"]
    assert main(["compose", "--config", "configs/local-tiny.yaml", "--out", str(out), *overrides]) == 0
    text = capsys.readouterr().out
    assert "train       8 tasks" in text and "objectives:tasks 1:16, 2:16" in text
    assert load_manifest(out)["dataset_hash"] in text
    bad = '[{"kind": "nq", "path": "' + str(tmp_path / "missing.jsonl") + '"}]'
    assert main(["compose", "--out", str(out), "--set", f"compose.sources={bad}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main(["compose", "--out", str(out), "--set", "compose.seed"]) == 2
    assert main(["compose", "--out", str(out), "--set", "compose.eval_objectives=[64]"]) == 2
    assert "eval_objectives" in capsys.readouterr().err
