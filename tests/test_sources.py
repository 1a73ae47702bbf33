"""QA loaders: HotpotQA / NQ from jsonl, json, parquet and datasets dirs; bad rows named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mem1_core.config import SourceSpec, WorldConfig
from mem1_core.data.sources import DataError, load_corpus_file, load_hotpotqa, load_nq, load_source
from mem1_core.data.world import build_world


def _hotpot_row(i: int) -> dict:
    return {
        "_id": f"h{i}",
        "question": f"Who wrote book {i}?",
        "answer": f"Author {i}",
        "type": "bridge",
        "supporting_facts": [[f"Book {i}", 0], [f"Author {i}", 1]],
        "context": [
            [f"Book {i}", [f"Book {i} is a novel.", " It was written by Author {i}."]],
            [f"Author {i}", ["Author is a writer.", " Born somewhere."]],
            ["Filler", ["Unrelated text."]],
        ],
    }


def _jsonl(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hotpotqa_jsonl_and_json_agree(tmp_path: Path) -> None:
    rows = [_hotpot_row(i) for i in range(4)]
    a = load_hotpotqa(str(_jsonl(tmp_path / "hp.jsonl", rows)))
    (tmp_path / "hp.json").write_text(json.dumps({"data": rows}))
    b = load_hotpotqa(str(tmp_path / "hp.json"))
    assert a == b and len(a) == 4
    item = a[1]
    assert item.id == "h1" and item.answers == ("Author 1",) and item.source == "hotpotqa" and item.hops == 2
    assert item.supporting_titles == ("Book 1", "Author 1")
    assert [d.title for d in item.context] == ["Book 1", "Author 1", "Filler"]
    assert item.context[0].text == "Book 1 is a novel. It was written by Author {i}."
    assert item.supporting_doc_ids == (item.context[0].id, item.context[1].id)
    # identical passages under different questions get one id
    assert a[0].context[2].id == a[3].context[2].id
    assert len(load_hotpotqa(str(tmp_path / "hp.jsonl"), limit=2)) == 2


def test_hotpotqa_hub_layout_and_parquet(tmp_path: Path) -> None:
    row = _hotpot_row(0)
    hub = {
        "id": "h0",
        "question": row["question"],
        "answer": row["answer"],
        "supporting_facts": {"title": ["Book 0", "Author 0"], "sent_id": [0, 1]},
        "context": {"title": [c[0] for c in row["context"]], "sentences": [c[1] for c in row["context"]]},
    }
    pq.write_table(pa.Table.from_pylist([hub]), tmp_path / "hub.parquet")
    (item,) = load_hotpotqa(str(tmp_path / "hub.parquet"))
    (orig,) = load_hotpotqa(str(_jsonl(tmp_path / "o.jsonl", [row])))
    assert item == orig


def test_nq_answers_ids_and_gold_passages(tmp_path: Path) -> None:
    rows = [
        {"question": "who is a?", "answer": ["A", "Ay"]},
        {"id": "x7", "question": "who is b?", "answers": ["B"]},
        {"question": "who is c?", "answer": "C", "gold_passage": {"title": "C page", "text": "C is c."}},
    ]
    items = load_nq(str(_jsonl(tmp_path / "nq.jsonl", rows)))
    assert [i.id for i in items] == ["nq-0", "x7", "nq-2"]
    assert [i.answers for i in items] == [("A", "Ay"), ("B",), ("C",)]
    assert items[2].context[0].title == "C page" and items[2].supporting_doc_ids == (items[2].context[0].id,)
    assert items[0].context == () and all(i.source == "nq" and i.hops == 1 for i in items)


def test_datasets_directory_goes_through_load_dataset(tmp_path: Path) -> None:
    ds_dir = tmp_path / "nq_ds"
    ds_dir.mkdir()
    _jsonl(
        ds_dir / "data.jsonl",
        [{"id": f"q{i}", "question": f"q {i}?", "answers": [f"a{i}"]} for i in range(5)],
    )
    items = load_nq(str(ds_dir), split="train", limit=3)
    assert [i.id for i in items] == ["q0", "q1", "q2"]


@pytest.mark.parametrize(
    ("mutate", "where", "field"),
    [
        (lambda r: r.pop("question"), ":4:", "'question' is missing"),
        (lambda r: r.update(answer=""), ":4:", "field 'answer"),
        (lambda r: r.update(answer=[]), ":4:", "'answer'"),
        (lambda r: r.update(supporting_facts=[["Book 2"]]), ":4:", "supporting_facts[0]"),
        (lambda r: r.update(supporting_facts=[["Book 2", "x"]]), ":4:", "supporting_facts[0][1]"),
        (lambda r: r.update(context=[["T", "not a list"]]), ":4:", "context[0]"),
        (lambda r: r.update(context=[["T", ["ok", 3]]]), ":4:", "context[0][1]"),
        (lambda r: r.pop("_id"), ":4:", "'id/_id' is missing"),
    ],
)
def test_bad_hotpot_row_names_file_line_and_field(tmp_path: Path, mutate, where: str, field: str) -> None:  # type: ignore[no-untyped-def]
    rows = [_hotpot_row(i) for i in range(4)]
    mutate(rows[2])
    path = _jsonl(tmp_path / "bad.jsonl", rows, blank_after=1)  # the bad row is on line 4
    with pytest.raises(DataError) as err:
        load_hotpotqa(str(path))
    assert f"bad.jsonl{where}" in str(err.value) and field in str(err.value)


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.jsonl:2: not valid JSON"):
        load_nq(str(_jsonl(tmp_path / "x.jsonl", [{"question": "q?", "answers": ["a"]}, "{oops"])))
    with pytest.raises(DataError, match=r"y\.jsonl:1: expected a JSON object"):
        load_nq(str(_jsonl(tmp_path / "y.jsonl", [[1, 2]])))
    (tmp_path / "z.json").write_text(json.dumps([{"question": "q?", "answers": ["a"]}, {"question": "q2?"}]))
    with pytest.raises(DataError, match=r"z\.json row 2: field 'answers/answer' is missing"):
        load_nq(str(tmp_path / "z.json"))
    (tmp_path / "obj.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_nq(str(tmp_path / "obj.json"))
    with pytest.raises(DataError, match="file not found"):
        load_nq(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_nq(str(tmp_path / "data.csv"))
    dup = [
        {"id": "same", "question": "a?", "answers": ["a"]},
        {"id": "same", "question": "b?", "answers": ["b"]},
    ]
    with pytest.raises(DataError, match=r"'same' appears twice \(items 1 and 2\)"):
        load_nq(str(_jsonl(tmp_path / "dup.jsonl", dup)))
    with pytest.raises(DataError, match="cannot load from the hub"):  # offline in tests
        load_nq("no-such-owner/no-such-dataset")


def test_corpus_file(tmp_path: Path) -> None:
    rows = [
        {"id": "d1", "title": "One", "contents": '"One"\nfirst text'},
        {"id": "d2", "contents": '"Two"\nsecond text'},  # title read from contents
        {"id": 3, "title": "Three", "text": "third text"},
    ]
    docs = load_corpus_file(_jsonl(tmp_path / "c.jsonl", rows))
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("d1", "One", "first text"), ("d2", "Two", "second text"), ("3", "Three", "third text")]  # fmt: skip
    bad = [*rows, {"id": "d2", "title": "Again", "contents": "x"}]
    with pytest.raises(DataError, match=r"d\.jsonl:5: duplicate document id 'd2' \(first at .*d\.jsonl:3\)"):
        load_corpus_file(_jsonl(tmp_path / "d.jsonl", bad, blank_after=0))
    with pytest.raises(DataError, match=r"must be a \.jsonl"):
        load_corpus_file(tmp_path / "c.json")
    with pytest.raises(DataError, match="empty"):
        load_corpus_file(_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(DataError, match=r"f\.jsonl:1: field 'contents/text' is missing"):
        load_corpus_file(_jsonl(tmp_path / "f.jsonl", [{"id": "a", "title": "A"}]))


def test_load_source_dispatch(tmp_path: Path) -> None:
    world = build_world(WorldConfig(seed=0, n_people=10, n_films=4, n_cities=3, n_companies=3))
    syn = load_source(SourceSpec(kind="synthetic", limit=5), world, hops=[1])
    assert len(syn) == 5 and all(i.hops == 1 and i.source == "synthetic" for i in syn)
    hp = _jsonl(tmp_path / "hp.jsonl", [_hotpot_row(0)])
    assert load_source(SourceSpec(kind="hotpotqa", path=str(hp)))[0].id == "h0"
    nq = _jsonl(tmp_path / "nq.jsonl", [{"question": "q?", "answers": ["a"]}])
    assert load_source(SourceSpec(kind="nq", path=str(nq)))[0].answers == ("a",)


@pytest.mark.realdata
def test_real_hotpotqa_nq_and_corpus(shared_data: Path) -> None:
    hp = load_hotpotqa(str(shared_data / "hotpotqa_dev.jsonl"))
    extra = load_hotpotqa(str(shared_data / "hotpotqa_dev_extra_ircot.jsonl"))
    nq = load_nq(str(shared_data / "nq_open_dev.jsonl"))
    gold = load_nq(str(shared_data / "nq_open_dev_gold_passages.jsonl"))
    corpus = load_corpus_file(shared_data / "hotpotqa_dev_corpus.jsonl")
    assert (len(hp), len(extra), len(nq), len(gold), len(corpus)) == (1983, 117, 3610, 2655, 20235)
    assert all(len(i.supporting_titles) >= 2 and len(i.context) >= 2 for i in hp)
    linked = sum(len(i.supporting_doc_ids) == len(i.supporting_titles) for i in hp) / len(hp)
    print(f"HotpotQA items whose supporting titles are all in their context: {linked:.4f}")
    assert linked > 0.99
    # the corpus file holds exactly the context paragraphs of both HotpotQA files
    ctx = {(d.title, d.text) for i in hp + extra for d in i.context}
    assert ctx == {(d.title, d.text) for d in corpus}
    assert all(i.answers and all(a for a in i.answers) for i in nq)
    assert all(len(i.context) == 1 for i in gold)
