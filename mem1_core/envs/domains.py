"""One place that maps a task domain ("qa", "shop") to its environment, turn budget and texts.

Training, evaluation, the rollout CLI and the registered agent all go through here, so a second
domain needs no fork of the trainers: they read the data dir's domain (manifest.json "domain"; a
manifest without it is QA) and ask this module for the pieces. QA keeps exactly its old behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mem1_core.config import AgentConfig
from mem1_core.data.compose import SHOP_FILE, load_corpus, load_manifest
from mem1_core.data.shop_catalog import Catalog, load_catalog
from mem1_core.data.sources import DataError
from mem1_core.data.types import Document, Task
from mem1_core.envs import qa, shop
from mem1_core.envs.qa import QAEnvironment
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar
from mem1_core.retrieval.backends import data_dir_backend
from mem1_core.retrieval.base import SearchBackend
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.client import RetrievalClient, RetrievalError

DOMAINS = ("qa", "shop")
PRODUCTS_FILE = SHOP_FILE


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: use one of {', '.join(DOMAINS)}")
    return domain


def domain_of(data_dir: Path) -> str:
    """The domain a composed data dir holds: manifest.json's "domain", "qa" when absent (older dirs)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return "qa"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    value = manifest.get("domain", "qa") if isinstance(manifest, dict) else "qa"
    try:
        return check_domain(str(value))
    except ValueError as e:
        raise DataError(f"{path}: field 'domain': {e}") from None


def default_turns(domain: str, n_objectives: int) -> int:
    """Turn budget when AgentConfig.max_turns is unset: QA 2n+2 (search, answer); shop 7n+2."""
    if check_domain(domain) == "shop":
        return shop.default_max_turns(n_objectives)
    return qa.default_max_turns(n_objectives)


def turns_for(domain: str, agent_cfg: AgentConfig, n_objectives: int) -> int:
    """The configured budget, else the domain's default."""
    return agent_cfg.max_turns if agent_cfg.max_turns is not None else default_turns(domain, n_objectives)


def load_shop_catalog(data_dir: Path, backend: SearchBackend | None = None) -> Catalog:
    """The data dir's products.jsonl as a Catalog; `backend` (e.g. a RetrievalClient) replaces BM25."""
    path = Path(data_dir) / PRODUCTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; a shop data dir needs it (run `mem1 compose` with domain shop)")
    catalog = load_catalog(path)
    return catalog.use_backend(backend) if backend is not None else catalog


def remote_backend(url: str, data_dir: Path | None, corpus: list[Document] | None = None) -> RetrievalClient:
    """A RetrievalClient for `url`, refused when the server holds a different number of documents than
    the data set's corpus (a server left on another corpus would silently answer from the wrong one)."""
    client = RetrievalClient(url)
    expected = len(corpus) if corpus is not None else None
    if expected is None and data_dir is not None and (Path(data_dir) / "manifest.json").is_file():
        # compose counted corpus.jsonl; reading a large corpus only to count it is what a server avoids
        expected = load_manifest(Path(data_dir)).get("counts", {}).get("documents")
    served = client.health().get("documents")
    if isinstance(expected, int) and isinstance(served, int) and served != expected:
        where = f"{data_dir}/corpus.jsonl" if data_dir is not None else "the corpus"
        raise RetrievalError(
            f"agent.retrieval_url {url} serves {served} documents but {where} has {expected}: "
            "point it at a server started on this data set (mem1 serve-retrieval --data-dir ...)"
        )
    return client


def env_factory_for(
    domain: str,
    data_dir: Path | None,
    agent_cfg: AgentConfig,
    grammar: TagGrammar = DEFAULT_GRAMMAR,
    backend: SearchBackend | None = None,
    corpus: list[Document] | None = None,
    catalog: Catalog | None = None,
) -> Callable[[Task], Any]:
    """The env_factory run_episodes takes. QA: BM25 over the corpus (or `backend`); shop: the catalogue
    (products.jsonl, or `catalog`), searched by BM25 or `backend`. `corpus` skips re-reading corpus.jsonl.
    Without `backend`, `agent_cfg.retrieval_url` names a retrieval server to search instead of BM25."""
    if backend is None and agent_cfg.retrieval_url:
        backend = remote_backend(agent_cfg.retrieval_url, data_dir, corpus)
    if check_domain(domain) == "shop":
        if catalog is None:
            if data_dir is None:
                raise ValueError("a shop environment needs a data dir with products.jsonl, or a catalog")
            catalog = load_shop_catalog(Path(data_dir), backend)
        elif backend is not None:
            catalog.use_backend(backend)
        return shop.make_shop_env_factory(
            catalog, grammar, max_turns=lambda n: turns_for("shop", agent_cfg, n)
        )

    if backend is None:
        if corpus is None:
            if data_dir is None:
                raise ValueError("a QA environment needs a data dir with corpus.jsonl, or a backend")
            corpus = load_corpus(Path(data_dir))
        # with a data dir: BM25, dense or hybrid, as the data set was composed (compose.retrieval)
        backend = data_dir_backend(Path(data_dir), corpus) if data_dir is not None else BM25Backend(corpus)

    def factory(task: Task) -> QAEnvironment:
        return QAEnvironment(
            task,
            backend,
            grammar=grammar,
            max_turns=turns_for("qa", agent_cfg, task.n_objectives),
            topk=agent_cfg.topk,
        )

    return factory


def tokenizer_texts(
    domain: str, tasks: Sequence[Task], documents: Sequence[Document], grammar: TagGrammar = DEFAULT_GRAMMAR
) -> Iterator[str]:
    """What a tiny model's tokenizer is trained on: the domain's documents and task prompts."""
    if check_domain(domain) != "shop":
        yield from qa.tokenizer_texts(tasks, documents, grammar)
        return
    for doc in documents:
        yield doc.contents
    for task in tasks:
        yield shop.shop_prompt(task.questions, default_turns("shop", task.n_objectives), grammar)


def summary_extras(domain: str, trajectories: Sequence[Any]) -> dict[str, float]:
    """Domain metrics beside eval.metrics.summarize. Shop: WebShop's success rate (share of instructions
    scoring 1.0, the final step's info["em"], kept by the rollout as metrics["env_em"])."""
    if check_domain(domain) != "shop" or not trajectories:
        return {}
    wins = sum(float(t.metrics.get("env_em", 0.0)) for t in trajectories)
    return {"success_rate": wins / len(trajectories)}
