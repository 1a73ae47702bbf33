"""compose: N-objective tasks from single questions, plus the retrieval corpus.

Questions from every source are deduplicated (by normalised text), shuffled by seed and split once
into an eval pool and a train pool, so no question is seen in both splits. Each task draws N distinct
questions from its pool; a question is reused across tasks only after the whole pool has been used.
Outputs: train.parquet and eval.parquet (datasets.Dataset of Task.to_row()), corpus.jsonl and
manifest.json, whose dataset_hash (sha256 over the written files) identifies the data exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mem1_core.config import ComposeConfig
from mem1_core.data import shop_catalog as sc
from mem1_core.data.sources import DataError, load_corpus_file, load_source
from mem1_core.data.types import Document, Objective, QAItem, Task
from mem1_core.data.world import build_world
from mem1_core.embedded_base import sha256_file
from mem1_core.protocol.scoring import normalize_answer

SPLITS = ("train", "eval")
DATA_FILES = ("train.parquet", "eval.parquet", "corpus.jsonl")
SHOP_FILE = "products.jsonl"  # the shop domain's catalogue (WebShop layout); envs.domains reads it


@dataclass
class ComposeResult:
    out_dir: Path
    n_train_tasks: int
    n_eval_tasks: int
    n_questions: int
    n_documents: int
    dataset_hash: str
    manifest: dict[str, Any] = field(default_factory=dict)


class _Deck:
    """Draws distinct questions for one task; the pool is used up before any question repeats."""

    def __init__(self, items: list[QAItem], rng: random.Random) -> None:
        self.items = items
        self.rng = rng
        self.order: list[int] = []

    def draw(self, n: int) -> list[QAItem]:
        if n > len(self.items):
            raise DataError(
                f"a {n}-objective task needs {n} distinct questions; the pool has {len(self.items)}"
            )
        picked: list[int] = []
        while len(picked) < n:
            if not self.order:
                self.order = list(range(len(self.items)))
                self.rng.shuffle(self.order)
            i = self.order.pop()
            if i in picked:  # only possible right after a reshuffle; put it back for the next task
                self.order.insert(0, i)
                continue
            picked.append(i)
        return [self.items[i] for i in picked]


def _objective(item: QAItem) -> Objective:
    return Objective(
        question=item.question,
        answers=item.answers,
        supporting_doc_ids=item.supporting_doc_ids,
        supporting_titles=item.supporting_titles,
        item_id=item.id,
        source=item.source,
        hops=item.hops,
    )


def collect_items(cfg: ComposeConfig) -> tuple[list[QAItem], list[Document]]:
    """Every source's questions (deduplicated by normalised text) and the corpus they are asked over."""
    world = build_world(cfg.world) if any(s.kind == "synthetic" for s in cfg.sources) else None
    items: list[QAItem] = []
    for spec in cfg.sources:
        items.extend(load_source(spec, world, hops=cfg.hops, seed=cfg.seed))
    seen: set[str] = set()
    unique: list[QAItem] = []
    for item in items:
        key = normalize_answer(item.question)
        if key not in seen:
            seen.add(key)
            unique.append(item)

    docs: dict[str, Document] = {}
    if world is not None:
        docs.update((d.id, d) for d in world.documents)
    if cfg.corpus_path:
        docs.update((d.id, d) for d in load_corpus_file(cfg.corpus_path))
    else:
        for item in unique:
            if item.source != "synthetic":
                docs.update((d.id, d) for d in item.context)
    if not docs:
        raise DataError("no corpus: real sources without context passages need compose.corpus_path")
    if cfg.corpus_path:
        unique = _link_support_to_corpus(unique, list(docs.values()))
    return unique, list(docs.values())


def _link_support_to_corpus(items: list[QAItem], docs: list[Document]) -> list[QAItem]:
    """Point supporting_doc_ids at the given corpus's ids (matched by unique title) where possible."""
    by_title: dict[str, str | None] = {}
    for d in docs:
        by_title[d.title] = None if d.title in by_title else d.id  # ambiguous titles map to None
    out = []
    for item in items:
        ids = tuple(by_title.get(t) for t in item.supporting_titles)
        if item.supporting_titles and all(ids):
            item = replace(item, supporting_doc_ids=tuple(i for i in ids if i))
        out.append(item)
    return out


def split_pools(items: list[QAItem], cfg: ComposeConfig) -> tuple[list[QAItem], list[QAItem]]:
    """Disjoint (train, eval) question pools; eval gets enough for unique questions where it can."""
    need_eval = cfg.n_eval_tasks * sum(cfg.eval_objectives)
    n_eval = max(max(cfg.eval_objectives), min(need_eval, len(items) // 2))
    min_train = max(cfg.train_objectives)
    if len(items) < n_eval + min_train:
        raise DataError(
            f"{len(items)} unique questions are too few: eval needs at least {max(cfg.eval_objectives)} "
            f"and train at least {min_train} distinct questions"
        )
    shuffled = list(items)
    random.Random(cfg.seed).shuffle(shuffled)
    return shuffled[n_eval:], shuffled[:n_eval]


def compose_tasks(items: list[QAItem], cfg: ComposeConfig) -> tuple[list[Task], list[Task]]:
    """(train tasks, eval tasks), deterministic in cfg.seed."""
    train_pool, eval_pool = split_pools(items, cfg)
    rng = random.Random(cfg.seed + 1)
    train_deck, eval_deck = _Deck(train_pool, rng), _Deck(eval_pool, rng)
    train = []
    for i in tqdm(range(cfg.n_train_tasks), desc="train tasks", leave=False):
        n = cfg.train_objectives[i % len(cfg.train_objectives)]
        objs = tuple(_objective(q) for q in train_deck.draw(n))
        train.append(Task(f"train-{i:06d}-n{n}", objs, extra={"split": "train"}))
    evals = []
    for n in tqdm(cfg.eval_objectives, desc="eval tasks", leave=False):
        for i in range(cfg.n_eval_tasks):
            objs = tuple(_objective(q) for q in eval_deck.draw(n))
            evals.append(Task(f"eval-n{n:02d}-{i:04d}", objs, extra={"split": "eval"}))
    return train, evals


def _write_tasks(tasks: list[Task], path: Path) -> None:
    import datasets  # lazy: ~1 s to import, only to write a data set; not a served agent's requirement

    datasets.Dataset.from_list([t.to_row() for t in tasks]).to_parquet(str(path))


def _write_corpus(docs: list[Document], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d.to_dict(), ensure_ascii=False) + "\n")


def compose_shop(cfg: ComposeConfig) -> tuple[Any, list[Task], list[Task], int]:
    """(catalogue, train tasks, eval tasks, number of goals) for the shop domain, deterministic in the
    seeds. Real WebShop files when `cfg.shop.products_path` is set, else the seeded catalogue; eval
    instructions target products never bought in training."""
    shop = cfg.shop
    try:
        if shop.products_path:
            catalog = sc.load_catalog(Path(shop.products_path))
        else:
            catalog = sc.build_catalog(seed=shop.seed, n_products=shop.n_products)
        if shop.goals_path:
            goals = sc.load_goals(Path(shop.goals_path), catalog)
            if not goals:
                raise DataError(f"{shop.goals_path}: no goal matches a product of {shop.products_path}")
            train_goals, eval_goals = sc.split_goals(goals, shop.eval_fraction, seed=shop.seed)
        else:
            train_asins, eval_asins = sc.split_asins(catalog, shop.eval_fraction, seed=shop.seed)
            n_train = max(len(train_asins), max(cfg.train_objectives))
            n_eval = max(len(eval_asins), max(cfg.eval_objectives))
            train_goals = sc.make_goals(catalog, n_train, seed=shop.seed, asins=train_asins)
            eval_goals = sc.make_goals(catalog, n_eval, seed=shop.seed + 1, asins=eval_asins)
        train, evals = sc.compose_shop_tasks(
            train_goals,
            eval_goals,
            cfg.train_objectives,
            cfg.eval_objectives,
            cfg.n_train_tasks,
            cfg.n_eval_tasks,
            seed=cfg.seed,
        )
    except (sc.ShopDataError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"compose (domain shop): {e}") from None
    return catalog, train, evals, len(train_goals) + len(eval_goals)


def run(cfg: ComposeConfig, out_dir: Path) -> ComposeResult:
    """Compose tasks and corpus into `out_dir` (created if needed) and write the manifest."""
    out_dir = Path(out_dir)
    catalog: Any = None
    if cfg.domain == "shop":
        catalog, train, evals, n_questions = compose_shop(cfg)
        docs = catalog.documents()
        sources = {catalog.source if cfg.shop.products_path else "synthetic-shop": n_questions}
    else:
        items, docs = collect_items(cfg)
        train, evals = compose_tasks(items, cfg)
        n_questions = len(items)
        sources = {s: sum(i.source == s for i in items) for s in sorted({i.source for i in items})}
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are valid: a failed run writes nothing
    _write_tasks(train, out_dir / "train.parquet")
    _write_tasks(evals, out_dir / "eval.parquet")
    _write_corpus(docs, out_dir / "corpus.jsonl")
    names = list(DATA_FILES)
    if catalog is not None:
        catalog.save(out_dir / SHOP_FILE)
        names.append(SHOP_FILE)

    files = {name: sha256_file(out_dir / name) for name in names}
    dataset_hash = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in files.items()).encode()).hexdigest()
    train_q = {o.question for t in train for o in t.objectives}
    eval_q = {o.question for t in evals for o in t.objectives}
    per_n = {str(n): sum(t.n_objectives == n for t in evals) for n in cfg.eval_objectives}
    manifest = {
        "domain": cfg.domain,
        "counts": {
            "train_tasks": len(train),
            "eval_tasks": len(evals),
            "eval_tasks_per_objective": per_n,
            "questions": n_questions,
            "train_questions": len(train_q),
            "eval_questions": len(eval_q),
            "documents": len(docs),
            "sources": sources,
        },
        "config": cfg.model_dump(mode="json"),
        "files": files,
        "dataset_hash": dataset_hash,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ComposeResult(out_dir, len(train), len(evals), n_questions, len(docs), dataset_hash, manifest)


def load_tasks(data_dir: Path, split: str) -> list[Task]:
    """The composed tasks of one split ("train" or "eval")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mem1 compose` to create {data_dir}")
    import pyarrow.parquet as pq  # lazy: only where a data dir's tasks are read (data/ is imported widely)

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    if not rows:
        raise DataError(f"{path}: no tasks (an empty split)")
    tasks = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        check_task_row(row, where)
        try:
            tasks.append(Task.from_row(row))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: malformed task row: {e!r}") from None
    return tasks


def _need(value: Any, kind: type | tuple[type, ...], where: str, field_name: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {field_name!r}: expected {what}, got {value!r:.60}")
    return value


def check_task_row(row: Any, where: str) -> None:
    """Check a Task.to_row() record field by field, so a bad file names its row and field."""
    _need(row, dict, where, "<row>", "an object")
    _need(row.get("id"), str, where, "id", "a string")
    objectives = _need(row.get("objectives"), list, where, "objectives", "a non-empty list")
    if not objectives:
        raise DataError(f"{where}: field 'objectives': expected a non-empty list, got []")
    for j, obj in enumerate(objectives):
        f = f"objectives[{j}]"
        _need(obj, dict, where, f, "an object")
        question = _need(obj.get("question"), str, where, f"{f}.question", "a non-empty string")
        if not question.strip():
            raise DataError(f"{where}: field '{f}.question': expected a non-empty string, got ''")
        answers = _need(obj.get("answers"), list, where, f"{f}.answers", "a non-empty list of strings")
        if not answers or not all(isinstance(a, str) for a in answers):
            got = f"{answers!r:.60}"
            raise DataError(f"{where}: field '{f}.answers': expected a non-empty list of strings, got {got}")
        for key in ("supporting_doc_ids", "supporting_titles"):
            if obj.get(key) is not None and not isinstance(obj[key], list):
                raise DataError(f"{where}: field '{f}.{key}': expected a list, got {obj[key]!r:.60}")
        if obj.get("hops") is not None:
            _need(obj["hops"], int, where, f"{f}.hops", "an integer")
    if row.get("extra") is not None:
        _need(row["extra"], str, where, "extra", "a JSON string")


def load_corpus(data_dir: Path) -> list[Document]:
    """The composed retrieval corpus (corpus.jsonl in `data_dir`)."""
    path = Path(data_dir) / "corpus.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mem1 compose` to create {data_dir}")
    return load_corpus_file(path)


def load_manifest(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `mem1 compose` to create {data_dir}")
    return json.loads(path.read_text())
