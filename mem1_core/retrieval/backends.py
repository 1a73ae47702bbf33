"""Which SearchBackend answers a data set's searches: BM25, dense or hybrid, chosen by RetrievalConfig.

A composed data dir carries its retrieval config in manifest.json (compose.retrieval) and, for dense
or hybrid, the index it built in `index/`. `data_dir_backend` opens what the data set says, so the
in-process environments, `mem1 serve-retrieval` and the retrieval image all search the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mem1_core.config import RetrievalConfig
from mem1_core.data.compose import load_corpus, load_manifest
from mem1_core.data.types import Document
from mem1_core.retrieval.base import SearchBackend
from mem1_core.retrieval.batching import BatchingEncoder
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.dense import DenseBackend, build_index
from mem1_core.retrieval.encoder import TextEncoder
from mem1_core.retrieval.hybrid import HybridBackend

INDEX_DIR = "index"


def index_dir_of(data_dir: Path) -> Path:
    return Path(data_dir) / INDEX_DIR


def open_backend(
    documents: Sequence[Document],
    cfg: RetrievalConfig,
    index_dir: Path | None = None,
    concurrent: bool = False,
) -> SearchBackend:
    """BM25 built here; dense and hybrid load the prebuilt index at `index_dir`, checked against `cfg`.
    `concurrent` (a server): queries arriving together from many threads are encoded in one batch."""
    if cfg.kind == "bm25":
        return BM25Backend(documents, show_progress=len(documents) > 10_000)
    if index_dir is None:
        raise ValueError(f"retrieval.kind {cfg.kind!r} needs a dense index directory; none was given")
    encoder: Any = None
    if concurrent:
        encoder = BatchingEncoder(TextEncoder(cfg))
    dense = DenseBackend.load(Path(index_dir), documents, cfg, encoder=encoder)
    if cfg.kind == "dense":
        return dense
    bm25 = BM25Backend(documents, show_progress=len(documents) > 10_000)
    return HybridBackend([bm25, dense], rrf_k=cfg.rrf_k, candidates=cfg.candidates)


def data_dir_config(data_dir: Path) -> RetrievalConfig:
    """The retrieval config a data dir was composed with (BM25 for data dirs older than the field)."""
    manifest_path = Path(data_dir) / "manifest.json"
    if not manifest_path.is_file():
        return RetrievalConfig()
    raw = load_manifest(Path(data_dir)).get("config", {}).get("retrieval")
    return RetrievalConfig.model_validate(raw) if raw else RetrievalConfig()


def data_dir_backend(
    data_dir: Path, documents: Sequence[Document] | None = None, kind: str | None = None
) -> SearchBackend:
    """The backend the data dir's config names (or `kind`, e.g. "bm25" to ignore an index)."""
    cfg = data_dir_config(data_dir)
    if kind is not None:
        cfg = cfg.model_copy(update={"kind": kind})
    docs = list(documents) if documents is not None else load_corpus(Path(data_dir))
    return open_backend(docs, cfg, index_dir_of(data_dir))


def build_data_dir_index(data_dir: Path, cfg: RetrievalConfig) -> dict[str, Any] | None:
    """Build `data_dir/index` when cfg.kind needs one (dense, hybrid); None for BM25 (built on load)."""
    if cfg.kind == "bm25":
        return None
    info = build_index(load_corpus(Path(data_dir)), cfg, index_dir_of(data_dir))
    return {
        "index_encoder": cfg.encoder,
        "index_dimension": info.dimension,
        "index_documents": info.n_documents,
        "index_build_seconds": round(info.seconds, 2),
        "index_bytes": info.bytes,
    }
