"""`mem1 build-index`: the dense index (faiss over passage embeddings) for a data dir or a corpus file.

Compose builds it already when compose.retrieval.kind is dense or hybrid; this rebuilds it, or builds
one for a corpus composed elsewhere (e.g. a Wikipedia dump for the retrieval Deployment).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mem1 build-index --data-dir runs/data --set compose.retrieval.kind=hybrid; "
        "on a cluster: --set compose.retrieval.encoder=intfloat/e5-base-v2 "
        "--set 'compose.retrieval.query_prefix=\"query: \"' "
        "--set 'compose.retrieval.passage_prefix=\"passage: \"'"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="a `mem1 compose` output dir; the index goes to DATA_DIR/index")
    src.add_argument("--corpus", help="corpus jsonl of {id, title, contents} rows (needs --out)")
    parser.add_argument("--out", default=None, help="index directory (default: DATA_DIR/index)")
    parser.add_argument(
        "--config", default="configs/local-tiny.yaml", help="pipeline config YAML (compose.retrieval section)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 build-index --help` must not pay for what the step imports (torch, faiss, the encoder)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.data.sources import DataError, load_corpus_file
    from mem1_core.retrieval.backends import index_dir_of
    from mem1_core.retrieval.dense import build_index

    cfg = config_from_args(args).compose.retrieval
    if cfg.kind == "bm25":
        cfg = cfg.model_copy(update={"kind": "dense"})  # asking for an index means dense search at least
    if args.corpus and not args.out:
        raise DataError("--corpus needs --out (where to write the index)")
    corpus = Path(args.corpus) if args.corpus else Path(args.data_dir) / "corpus.jsonl"
    if not corpus.is_file():
        raise DataError(f"{corpus}: corpus not found")
    out = Path(args.out) if args.out else index_dir_of(Path(args.data_dir))
    docs = load_corpus_file(corpus)
    print(f"encoding {len(docs)} documents from {corpus} with {cfg.encoder}", flush=True)
    info = build_index(docs, cfg, out)
    mib = info.bytes / 2**20
    print(f"index {info.path}: {info.n_documents} x {info.dimension}, {mib:.1f} MiB, {info.seconds:.1f} s")
    return 0
