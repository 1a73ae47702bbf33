"""`mem1 serve-retrieval`: BM25 over a corpus behind POST /retrieve (the reference API) and GET /healthz."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Answers POST /retrieve {'queries': [...], 'topk': 3, 'return_scores': true} with "
        "{'result': [[{'document': {'id', 'contents'}, 'score'}]]}, the format of the MEM1 / Search-R1 "
        "retrieval servers, so either side can be swapped. Example: "
        "mem1 serve-retrieval --data-dir runs/data --port 8000"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="corpus jsonl of {id, title, contents} rows")
    src.add_argument("--data-dir", help="a `mem1 compose` output directory (uses its corpus.jsonl)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    # lazy: `mem1 serve-retrieval --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.data.sources import DataError, load_corpus_file
    from mem1_core.retrieval.bm25 import BM25Backend
    from mem1_core.retrieval.server import serve

    if not 0 <= args.port <= 65535:
        raise DataError(f"--port {args.port}: must be within 0..65535")
    path = Path(args.corpus) if args.corpus else Path(args.data_dir) / "corpus.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: corpus not found")
    docs = load_corpus_file(path)
    print(f"indexing {len(docs)} documents from {path} (BM25)", flush=True)
    backend = BM25Backend(docs, show_progress=len(docs) > 10_000)
    print(f"serving on http://{args.host}:{args.port} (POST /retrieve, GET /healthz)", flush=True)
    serve(backend, host=args.host, port=args.port, n_documents=len(docs))
    return 0
