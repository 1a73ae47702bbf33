"""Dense retrieval: a faiss inner-product index over passage embeddings, and the backend that searches it.

The index is a directory: `passages.faiss` (exact IndexFlatIP: at these corpus sizes exact search is
fast enough and needs no training) and `meta.json` (encoder, pooling, normalisation, prefixes,
dimension, document count and a hash of the corpus). Loading checks every field against what the
caller asks for and the corpus it holds, and refuses a mismatch naming the file and the field: an index
built with another encoder or over another corpus would answer with confident nonsense.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mem1_core.config import RetrievalConfig
from mem1_core.data.sources import DataError
from mem1_core.data.types import Document
from mem1_core.retrieval.base import Hit
from mem1_core.retrieval.batching import BatchingEncoder
from mem1_core.retrieval.encoder import TextEncoder

INDEX_FILE = "passages.faiss"
META_FILE = "meta.json"
FORMAT_VERSION = 1
# The settings that shape the vectors: a query must be encoded exactly as the passages were.
ENCODER_FIELDS = ("encoder", "pooling", "normalize", "max_length", "query_prefix", "passage_prefix")


class IndexMismatchError(DataError):
    """An index does not fit the config or corpus it is loaded with; the message names file and field."""


def corpus_hash(documents: Sequence[Document]) -> str:
    """sha256 over ids and contents in order: the same corpus read from any file hashes the same."""
    h = hashlib.sha256()
    for d in documents:
        h.update(d.id.encode())
        h.update(b"\0")
        h.update(d.contents.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class IndexInfo:
    path: Path
    dimension: int
    n_documents: int
    seconds: float
    bytes: int


def build_index(
    documents: Sequence[Document], cfg: RetrievalConfig, out_dir: Path, encoder: TextEncoder | None = None
) -> IndexInfo:
    """Encode every passage (with cfg.passage_prefix) and write the index and its metadata to `out_dir`."""
    import faiss  # lazy: dense and hybrid retrieval only; not a served agent's requirement

    if not documents:
        raise ValueError("a dense index needs at least one document")
    t0 = time.perf_counter()
    encoder = encoder or TextEncoder(cfg)
    vectors = encoder.encode([cfg.passage_prefix + d.contents for d in documents], progress=True)
    index = faiss.IndexFlatIP(encoder.dim)
    index.add(vectors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out_dir / INDEX_FILE))
    seconds = time.perf_counter() - t0
    meta = {
        "format_version": FORMAT_VERSION,
        **{f: getattr(cfg, f) for f in ENCODER_FIELDS},
        "dimension": encoder.dim,
        "n_documents": len(documents),
        "corpus_hash": corpus_hash(documents),
        "metric": "inner_product",
        "faiss_index": type(index).__name__,
        "retrieval": cfg.model_dump(mode="json"),
        "build_seconds": round(seconds, 2),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return IndexInfo(out_dir, encoder.dim, len(documents), seconds, index_bytes(out_dir))


def index_bytes(index_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(index_dir).iterdir() if p.is_file())


def read_meta(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no dense index here; build one (mem1 build-index, or compose with retrieval.kind "
            "dense or hybrid)"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path}: field 'format_version' is {version!r}, this code reads {FORMAT_VERSION}; "
            "rebuild the index"
        )
    return meta


def check_meta(
    meta: dict[str, Any], meta_path: Path, cfg: RetrievalConfig, documents: Sequence[Document]
) -> None:
    """Refuse an index whose encoder settings differ from `cfg` or whose corpus differs from `documents`."""
    expected: dict[str, Any] = {f: getattr(cfg, f) for f in ENCODER_FIELDS}
    expected["n_documents"] = len(documents)
    for field, want in expected.items():
        if meta.get(field) != want:
            raise IndexMismatchError(
                f"{meta_path}: field {field!r} is {meta.get(field)!r} but {want!r} is expected; "
                "rebuild the index with these settings (mem1 build-index) or load it with the ones it records"
            )
    got = corpus_hash(documents)
    if meta.get("corpus_hash") != got:
        raise IndexMismatchError(
            f"{meta_path}: field 'corpus_hash' is {meta.get('corpus_hash')!r} but the corpus loaded with it "
            f"hashes to {got!r}: the index was built over other documents; rebuild it"
        )


class DenseBackend:
    """Top-k passages by inner product with the encoded query (cosine when normalised), best first.

    Ties keep faiss's order (lower document index first), so results are deterministic. Safe to call
    from several threads: encoding is serialised in the encoder, faiss search is read-only.
    """

    def __init__(
        self,
        documents: Sequence[Document],
        index: Any,
        encoder: TextEncoder | BatchingEncoder,
        query_prefix: str,
    ) -> None:
        if index.ntotal != len(documents):
            raise IndexMismatchError(f"the index holds {index.ntotal} vectors for {len(documents)} documents")
        if index.d != encoder.dim:
            raise IndexMismatchError(
                f"the index has dimension {index.d}, encoder {encoder.name} gives {encoder.dim}"
            )
        self.documents = list(documents)
        self.index = index
        self.encoder = encoder
        self.query_prefix = query_prefix

    @classmethod
    def load(
        cls,
        index_dir: Path,
        documents: Sequence[Document],
        cfg: RetrievalConfig,
        encoder: TextEncoder | BatchingEncoder | None = None,
    ) -> DenseBackend:
        """Load `index_dir` after checking its metadata against `cfg` and `documents`."""
        import faiss  # lazy: dense and hybrid retrieval only; not a served agent's requirement

        index_dir = Path(index_dir)
        meta = read_meta(index_dir)
        check_meta(meta, index_dir / META_FILE, cfg, documents)
        encoder = encoder or TextEncoder(cfg)
        if meta.get("dimension") != encoder.dim:
            raise IndexMismatchError(
                f"{index_dir / META_FILE}: field 'dimension' is {meta.get('dimension')!r} but encoder "
                f"{cfg.encoder!r} gives {encoder.dim}"
            )
        index = faiss.read_index(str(index_dir / INDEX_FILE))
        return cls(documents, index, encoder, cfg.query_prefix)

    def __len__(self) -> int:
        return len(self.documents)

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        results: list[list[Hit]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(queries) if q.strip()]  # blank queries match nothing, as in BM25
        if not todo:
            return results
        vectors = self.encoder.encode([self.query_prefix + queries[i] for i in todo])
        scores, ids = self.index.search(vectors, min(topk, len(self.documents)))
        for row, i in enumerate(todo):
            results[i] = [
                Hit(self.documents[j], float(s)) for s, j in zip(scores[row], ids[row], strict=True) if j >= 0
            ]
        return results
