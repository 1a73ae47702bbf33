"""`mem1 serve-retrieval`: BM25, dense or hybrid search over a corpus behind POST /retrieve (the
reference API) and GET /healthz."""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("auto", "bm25", "dense", "hybrid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Answers POST /retrieve {'queries': [...], 'topk': 3, 'return_scores': true} with "
        "{'result': [[{'document': {'id', 'contents'}, 'score'}]]}, the format of the MEM1 / Search-R1 "
        "retrieval servers, so either side can be swapped. Example: "
        "mem1 serve-retrieval --data-dir runs/data --kind hybrid --port 8000"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="corpus jsonl of {id, title, contents} rows")
    src.add_argument("--data-dir", help="a `mem1 compose` output directory (its corpus.jsonl and index/)")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="auto",
        help="auto: what the data dir was composed with (compose.retrieval.kind), or the index's own "
        "kind with --index; bm25 needs no index; dense and hybrid load the prebuilt index",
    )
    parser.add_argument(
        "--index", default=None, help="dense index directory (default: DATA_DIR/index); checked on load"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 serve-retrieval --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.config import RetrievalConfig
    from mem1_core.data.sources import DataError, load_corpus_file
    from mem1_core.retrieval.backends import data_dir_config, index_dir_of, open_backend
    from mem1_core.retrieval.dense import read_meta
    from mem1_core.retrieval.server import serve

    if not 0 <= args.port <= 65535:
        raise DataError(f"--port {args.port}: must be within 0..65535")
    path = Path(args.corpus) if args.corpus else Path(args.data_dir) / "corpus.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: corpus not found")
    index = Path(args.index) if args.index else (index_dir_of(Path(args.data_dir)) if args.data_dir else None)
    if args.data_dir:
        cfg = data_dir_config(Path(args.data_dir))  # the data set's own settings; the index must match them
    elif index is not None and (index / "meta.json").is_file():
        cfg = RetrievalConfig.model_validate(read_meta(index)["retrieval"])  # only the corpus is checked
    else:
        cfg = RetrievalConfig()
    if args.kind != "auto":
        cfg = cfg.model_copy(update={"kind": args.kind})
    docs = load_corpus_file(path)
    where = f", index {index}" if cfg.kind != "bm25" else ""
    print(f"indexing {len(docs)} documents from {path} ({cfg.kind}{where})", flush=True)
    backend = open_backend(docs, cfg, index, concurrent=True)
    print(f"serving on http://{args.host}:{args.port} (POST /retrieve, GET /healthz)", flush=True)
    serve(backend, host=args.host, port=args.port, n_documents=len(docs))
    return 0
