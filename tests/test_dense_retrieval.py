"""Dense and hybrid retrieval with the real embedded encoder (all-MiniLM-L6-v2 from its wheel, offline):
the right passage comes first, a mismatched index is refused, and the HTTP server ranks exactly as the
in-process backend does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mem1_core.config import ComposeConfig, ConfigError, RetrievalConfig, WorldConfig, parse_section
from mem1_core.data import compose
from mem1_core.data.types import Document
from mem1_core.retrieval.backends import build_data_dir_index, data_dir_backend, index_dir_of
from mem1_core.retrieval.base import Hit
from mem1_core.retrieval.batching import BatchingEncoder
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.client import RetrievalClient
from mem1_core.retrieval.dense import META_FILE, DenseBackend, IndexMismatchError, build_index
from mem1_core.retrieval.encoder import TextEncoder
from mem1_core.retrieval.hybrid import HybridBackend
from mem1_core.retrieval.server import start_background

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = [
    Document("d0", "Volcano", "A mountain that erupts molten rock, ash and gases from the earth's crust."),
    Document("d1", "Violin", "A wooden string instrument played with a bow, the smallest of its family."),
    Document("d2", "Photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    Document("d3", "Marathon", "A long-distance foot race of 42.195 kilometres run on roads."),
    Document("d4", "Penicillin", "The first antibiotic, found by Alexander Fleming in mould in 1928."),
    Document("d5", "Glacier", "A slow river of ice that forms where snow piles up over centuries."),
    Document("d6", "Espresso", "Coffee brewed by forcing hot water through finely ground beans."),
    Document("d7", "Chess", "A board game for two players in which each tries to checkmate the king."),
]
# Paraphrases sharing (almost) no word with their passage: only a dense encoder finds them.
QUERIES = {
    "which medicine kills bacteria and came from a fungus": "d4",
    "how do leaves make food from light": "d2",
    "a fiddle": "d1",
    "strong small cup of coffee": "d6",
    "frozen water flowing down a valley": "d5",
    "running 26 miles": "d3",
}


@pytest.fixture(scope="module")
def cfg() -> RetrievalConfig:
    return RetrievalConfig(kind="dense", batch_size=4)


@pytest.fixture(scope="module")
def encoder(cfg: RetrievalConfig) -> TextEncoder:
    return TextEncoder(cfg)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, cfg: RetrievalConfig, encoder: TextEncoder) -> Path:
    out = tmp_path_factory.mktemp("index")
    build_index(DOCS, cfg, out, encoder=encoder)
    return out


@pytest.fixture(scope="module")
def dense(index_dir: Path, cfg: RetrievalConfig, encoder: TextEncoder) -> DenseBackend:
    return DenseBackend.load(index_dir, DOCS, cfg, encoder=encoder)


def test_dense_index_returns_the_right_passage(dense: DenseBackend) -> None:
    results = dense.search(list(QUERIES), topk=3)
    assert [hits[0].document.id for hits in results] == list(QUERIES.values())
    for hits in results:
        assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    assert dense.search(["   ", "a fiddle"], 2)[0] == []  # blank query: nothing, as with BM25
    assert len(dense.search(["a fiddle"], 50)[0]) == len(DOCS)  # topk beyond the corpus is clipped
    with pytest.raises(ValueError, match="topk"):
        dense.search(["x"], 0)


def test_embeddings_are_normalised_and_deterministic(encoder: TextEncoder) -> None:
    import numpy as np

    a = encoder.encode(["a fiddle", "chess"])
    b = encoder.encode(["chess", "a fiddle"], batch_size=1)
    assert a.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a[0], b[1], atol=1e-5)


def test_index_metadata(index_dir: Path) -> None:
    meta = json.loads((index_dir / META_FILE).read_text())
    assert meta["encoder"] == "embedded:all-MiniLM-L6-v2" and meta["dimension"] == 384
    assert meta["n_documents"] == len(DOCS) and len(meta["corpus_hash"]) == 64


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"query_prefix": "query: "}, "query_prefix"),
        ({"passage_prefix": "passage: "}, "passage_prefix"),
        ({"pooling": "cls"}, "pooling"),
        ({"normalize": False}, "normalize"),
        ({"encoder": "intfloat/e5-base-v2"}, "encoder"),
        ({"max_length": 128}, "max_length"),
    ],
)
def test_mismatched_settings_are_refused(
    index_dir: Path, cfg: RetrievalConfig, encoder: TextEncoder, change: dict, field: str
) -> None:
    with pytest.raises(IndexMismatchError) as err:
        DenseBackend.load(index_dir, DOCS, cfg.model_copy(update=change), encoder=encoder)
    assert str(index_dir / META_FILE) in str(err.value) and repr(field) in str(err.value)


def test_other_corpus_is_refused(index_dir: Path, cfg: RetrievalConfig, encoder: TextEncoder) -> None:
    edited = [*DOCS[:-1], Document("d7", "Chess", "A board game.")]  # same ids and count, other text
    with pytest.raises(IndexMismatchError, match="'corpus_hash'") as err:
        DenseBackend.load(index_dir, edited, cfg, encoder=encoder)
    assert str(index_dir / META_FILE) in str(err.value)
    with pytest.raises(IndexMismatchError, match="'n_documents'"):
        DenseBackend.load(index_dir, DOCS[:-1], cfg, encoder=encoder)


def test_missing_index_names_the_file(tmp_path: Path, cfg: RetrievalConfig) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / META_FILE))):
        DenseBackend.load(tmp_path, DOCS, cfg)


def test_hybrid_fuses_by_reciprocal_rank(dense: DenseBackend) -> None:
    hybrid = HybridBackend([BM25Backend(DOCS), dense], rrf_k=60, candidates=8)
    # "espresso" is lexical and semantic: both rank d6 first, so it tops the fusion with 2/61
    top = hybrid.search(["espresso coffee"], 3)[0]
    assert top[0].document.id == "d6" and top[0].score == pytest.approx(2 / 61)
    # a paraphrase BM25 cannot match is still found through the dense ranking
    assert hybrid.search(["a fiddle"], 1)[0][0].document.id == "d1"
    assert [len(h) for h in hybrid.search(["chess", "a fiddle"], 2)] == [2, 2]


def test_server_and_in_process_rankings_are_identical(dense: DenseBackend) -> None:
    hybrid = HybridBackend([BM25Backend(DOCS), dense], candidates=8)
    queries = [*QUERIES, "volcano ash", "board game king", "zzqx unknown"]
    for backend in (dense, hybrid):
        with start_background(backend, n_documents=len(DOCS)) as server:
            client = RetrievalClient(server.url)
            for k in (1, 3, 8):
                remote = client.search(queries, k)
                local = backend.search(queries, k)
                assert remote == local
                assert all(isinstance(h, Hit) for hits in remote for h in hits)


def test_retrieval_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"retrieval\.kind"):
        parse_section(ComposeConfig, {"retrieval": {"kind": "e5"}}, "compose")
    with pytest.raises(ConfigError, match=r"retrieval\.rrf_k"):
        parse_section(ComposeConfig, {"retrieval": {"rrf_k": 0}}, "compose")


def test_composed_data_dir_serves_its_own_kind(tmp_path: Path) -> None:
    """compose.retrieval.kind=hybrid: the index is built into the data dir and every consumer opens it."""
    ccfg = ComposeConfig(
        world=WorldConfig(seed=1, n_people=20, n_films=8, n_cities=4, n_companies=4),
        n_train_tasks=4,
        n_eval_tasks=2,
        eval_objectives=[1, 2],
        retrieval=RetrievalConfig(kind="hybrid"),
    )
    compose.run(ccfg, tmp_path)
    info = build_data_dir_index(tmp_path, ccfg.retrieval)
    assert info and info["index_dimension"] == 384 and (index_dir_of(tmp_path) / META_FILE).is_file()
    backend = data_dir_backend(tmp_path)
    assert isinstance(backend, HybridBackend)
    assert isinstance(data_dir_backend(tmp_path, kind="dense"), DenseBackend)
    assert isinstance(data_dir_backend(tmp_path, kind="bm25"), BM25Backend)
    docs = compose.load_corpus(tmp_path)
    assert backend.search([docs[0].title], 1)[0][0].document.id == docs[0].id
    # the corpus changed after the index was built: refused, naming the index's meta.json
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps(d.to_dict()) + "\n" for d in docs[:-1]), encoding="utf-8"
    )
    with pytest.raises(IndexMismatchError, match=re.escape(str(index_dir_of(tmp_path) / META_FILE))):
        data_dir_backend(tmp_path)


def test_batched_concurrent_queries_rank_as_one_at_a_time(dense: DenseBackend, encoder: TextEncoder) -> None:
    """The server's micro-batching encoder: many threads at once get the rankings of sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    batched = DenseBackend(dense.documents, dense.index, BatchingEncoder(encoder, max_batch=4), "")
    queries = [*QUERIES, "volcano ash", "board game king"] * 3
    expected = [[h.document.id for h in dense.search([q], 3)[0]] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: [h.document.id for h in batched.search([q], 3)[0]], queries))
    assert got == expected
