"""QA sources in one shape: HotpotQA and Natural Questions (hub id or local file), the synthetic world.

Real loaders accept a hub id (through `datasets.load_dataset`) or a local .json / .jsonl / .parquet
file, and map each row to a `QAItem`. Every row used is validated while it is mapped, before any
task is composed, and a bad row fails with a `DataError` naming the file, the row (the 1-based line
for jsonl) and the field. Context passages get content-derived ids, so the same paragraph seen
under two questions is one corpus document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mem1_core.config import SourceSpec, WorldConfig
from mem1_core.data.types import Document, QAItem
from mem1_core.data.world import World, build_world

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row/line and field."""


def passage_id(source: str, title: str, text: str) -> str:
    """Stable id from content: identical passages from different questions share one id."""
    digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]
    return f"{source}:{digest}"


def _iter_rows(path_or_id: str, split: str, limit: int | None) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs; `where` is 'file:LINE' for jsonl, 'file row N' otherwise (1-based)."""
    path = Path(path_or_id)
    looks_local = path.suffix.lower() in LOCAL_SUFFIXES or path.exists()
    if not looks_local or path.is_dir():  # a hub id, or a local data set directory for load_dataset
        yield from _iter_hub(path_or_id, split, limit)
        return
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    count = 0
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                if limit is not None and count >= limit:
                    return
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
                count += 1
                yield f"{path}:{lineno}", row
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
        rows: list[Any] = data
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only for a local parquet source

        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
    for i, row in enumerate(rows[:limit] if limit is not None else rows, start=1):
        yield f"{path} row {i}", row


def _iter_hub(hub_id: str, split: str, limit: int | None) -> Iterator[tuple[str, Any]]:
    """A hub id or local data set dir; 'name:config' picks a config ('hotpotqa/hotpot_qa:distractor')."""
    import datasets  # lazy: only for hub sources; not a served agent's requirement (it reads corpora here)

    name, _, config = hub_id.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown id, bad split: one clear message either way
        raise DataError(f"{hub_id} (split {split!r}): cannot load from the hub: {e}") from e
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        yield f"{hub_id}[{split}] row {i + 1}", ds[i]


def _field(row: Any, where: str, *names: str, required: bool = True) -> Any:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        raise DataError(f"{where}: field {'/'.join(names)!r} is missing")
    return None


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r}: expected a non-empty string, got {value!r:.60}")
    return value.strip()


def _answers(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {name!r}: expected a non-empty list of strings")
    return tuple(_text(v, where, f"{name}[{i}]") for i, v in enumerate(value))


def _hotpot_context(row: dict[str, Any], where: str) -> list[tuple[str, list[str]]]:
    ctx = _field(row, where, "context")
    if isinstance(ctx, dict):  # hub layout: {"title": [...], "sentences": [[...], ...]}
        titles, sents = ctx.get("title"), ctx.get("sentences")
        if not isinstance(titles, list) or not isinstance(sents, list) or len(titles) != len(sents):
            raise DataError(f"{where}: field 'context': expected aligned 'title' and 'sentences' lists")
        ctx = [[t, s] for t, s in zip(titles, sents, strict=True)]
    if not isinstance(ctx, list):
        raise DataError(f"{where}: field 'context': expected a list of [title, [sentences]]")
    out = []
    for i, pair in enumerate(ctx):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[1], list | tuple)):
            raise DataError(f"{where}: field 'context[{i}]': expected [title, [sentences]]")
        title = _text(pair[0], where, f"context[{i}][0]")
        if not all(isinstance(s, str) for s in pair[1]):
            raise DataError(f"{where}: field 'context[{i}][1]': sentences must be strings")
        out.append((title, list(pair[1])))
    return out


def _hotpot_support(row: dict[str, Any], where: str) -> list[str]:
    facts = _field(row, where, "supporting_facts")
    if isinstance(facts, dict):  # hub layout: {"title": [...], "sent_id": [...]}
        facts = [[t, None] for t in facts.get("title") or []]
    if not isinstance(facts, list):
        raise DataError(f"{where}: field 'supporting_facts': expected a list of [title, sentence index]")
    titles: list[str] = []
    for i, fact in enumerate(facts):
        if not (isinstance(fact, list | tuple) and len(fact) == 2):
            raise DataError(f"{where}: field 'supporting_facts[{i}]': expected [title, sentence index]")
        if fact[1] is not None and not isinstance(fact[1], int):
            raise DataError(f"{where}: field 'supporting_facts[{i}][1]': expected an integer or null")
        title = _text(fact[0], where, f"supporting_facts[{i}][0]")
        if title not in titles:
            titles.append(title)
    return titles


def hotpotqa_item(row: Any, where: str) -> QAItem:
    """One HotpotQA row (original or hub layout) as a QAItem with its context paragraphs."""
    qid = _text(str(_field(row, where, "id", "_id")), where, "id")
    question = _text(_field(row, where, "question"), where, "question")
    answers = _answers(_field(row, where, "answer", "answers"), where, "answer")
    context = _hotpot_context(row, where)
    support = _hotpot_support(row, where)
    docs = []
    for title, sentences in context:
        text = "".join(sentences).strip()
        docs.append(Document(passage_id("hotpotqa", title, text), title, text))
    by_title = {d.title: d.id for d in docs}
    return QAItem(
        id=qid,
        question=question,
        answers=answers,
        source="hotpotqa",
        supporting_titles=tuple(support),
        supporting_doc_ids=tuple(by_title[t] for t in support if t in by_title),
        context=tuple(docs),
        hops=max(1, len(support)),
    )


def nq_item(row: Any, where: str, index: int) -> QAItem:
    """One NQ-open row {question, answer|answers, id?, gold_passage?: {title, text}} as a QAItem."""
    question = _text(_field(row, where, "question"), where, "question")
    answers = _answers(_field(row, where, "answers", "answer"), where, "answers")
    raw_id = _field(row, where, "id", required=False)
    qid = str(raw_id) if raw_id is not None else f"nq-{index}"
    docs: tuple[Document, ...] = ()
    gold = _field(row, where, "gold_passage", required=False)
    if gold is not None:
        if not isinstance(gold, dict):
            raise DataError(f"{where}: field 'gold_passage': expected an object with title and text")
        title = _text(gold.get("title"), where, "gold_passage.title")
        text = _text(gold.get("text"), where, "gold_passage.text")
        docs = (Document(passage_id("nq", title, text), title, text),)
    return QAItem(
        id=qid,
        question=question,
        answers=answers,
        source="nq",
        supporting_titles=tuple(d.title for d in docs),
        supporting_doc_ids=tuple(d.id for d in docs),
        context=docs,
        hops=1,
    )


def _check_unique_ids(items: list[QAItem], path: str) -> None:
    if not items:  # an empty file would otherwise surface later as 'too few questions', without its name
        raise DataError(f"{path}: no rows; the file is empty")
    seen: dict[str, int] = {}
    for i, item in enumerate(items, start=1):
        if item.id in seen:
            raise DataError(f"{path}: question id {item.id!r} appears twice (items {seen[item.id]} and {i})")
        seen[item.id] = i


def load_hotpotqa(path_or_id: str, split: str = "validation", limit: int | None = None) -> list[QAItem]:
    rows = _iter_rows(path_or_id, split, limit)
    items = [hotpotqa_item(row, where) for where, row in tqdm(rows, desc="hotpotqa", unit="row", leave=False)]
    _check_unique_ids(items, path_or_id)
    return items


def load_nq(path_or_id: str, split: str = "validation", limit: int | None = None) -> list[QAItem]:
    rows = _iter_rows(path_or_id, split, limit)
    items = [
        nq_item(row, where, i)
        for i, (where, row) in enumerate(tqdm(rows, desc="nq", unit="row", leave=False))
    ]
    _check_unique_ids(items, path_or_id)
    return items


def load_source(
    spec: SourceSpec, world: World | None = None, hops: list[int] | None = None, seed: int = 0
) -> list[QAItem]:
    """The items of one source; synthetic questions come from `world` (the default world if None)."""
    if spec.kind == "synthetic":
        world = world if world is not None else build_world(WorldConfig())
        return world.questions(hops=hops or (1, 2), limit=spec.limit, seed=seed)
    assert spec.path is not None  # SourceSpec validation guarantees it
    if spec.kind == "hotpotqa":
        return load_hotpotqa(spec.path, spec.split, spec.limit)
    return load_nq(spec.path, spec.split, spec.limit)


def _corpus_document(row: Any, where: str) -> Document:
    doc_id = _text(str(_field(row, where, "id")), where, "id")
    title = _field(row, where, "title", required=False)
    contents = _field(row, where, "contents", "text")
    if not isinstance(contents, str):
        raise DataError(f"{where}: field 'contents': expected a string")
    if title is None:  # reference layout: '"Title"\ntext'
        first, _, rest = contents.partition("\n")
        title, contents = first.strip().strip('"'), rest
    title = _text(title, where, "title")
    prefix = f'"{title}"\n'
    text = contents[len(prefix) :] if contents.startswith(prefix) else contents
    return Document(doc_id, title, text.strip())


def load_corpus_file(path: str | Path) -> list[Document]:
    """A {id, title, contents} jsonl corpus; duplicate ids are an error naming both lines."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: a corpus must be a .jsonl file of {{id, title, contents}} rows")
    docs: list[Document] = []
    first_seen: dict[str, str] = {}
    for where, row in tqdm(_iter_rows(str(path), "", None), desc="corpus", unit="doc", leave=False):
        doc = _corpus_document(row, where)
        if doc.id in first_seen:
            raise DataError(f"{where}: duplicate document id {doc.id!r} (first at {first_seen[doc.id]})")
        first_seen[doc.id] = where
        docs.append(doc)
    if not docs:
        raise DataError(f"{path}: the corpus is empty")
    return docs
