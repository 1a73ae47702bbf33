"""`mem1 compose`: N-objective train/eval tasks and the retrieval corpus into one data directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Writes train.parquet, eval.parquet, corpus.jsonl and manifest.json (with the sha256 dataset_hash), "
        "and index/ (the dense index) when compose.retrieval.kind is dense or hybrid. "
        "Example: mem1 compose --config configs/local-tiny.yaml --out runs/data "
        "--set compose.n_train_tasks=64"
    )
    parser.add_argument(
        "--config", default="configs/local-tiny.yaml", help="pipeline config YAML (compose: section)"
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override with a dotted key, VALUE parsed as JSON when it can be "
        "(e.g. --set compose.seed=3 --set compose.eval_objectives=[1,2])",
    )


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 compose --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.data import compose
    from mem1_core.retrieval.backends import build_data_dir_index

    cfg = config_from_args(args).compose
    result = compose.run(cfg, Path(args.out))
    index = build_data_dir_index(Path(args.out), cfg.retrieval)  # dense / hybrid only
    counts = result.manifest["counts"]
    per_n = ", ".join(f"{n}:{k}" for n, k in counts["eval_tasks_per_objective"].items())
    sources = ", ".join(f"{s}={k}" for s, k in counts["sources"].items())
    print(f"composed {result.out_dir}")
    print(f"  questions   {result.n_questions} unique ({sources})")
    n_train_q = counts["train_questions"]
    objectives = cfg.train_objectives
    print(f"  train       {result.n_train_tasks} tasks ({objectives} objectives), {n_train_q} questions")
    n_eval_q = counts["eval_questions"]
    print(f"  eval        {result.n_eval_tasks} tasks (objectives:tasks {per_n}), {n_eval_q} questions")
    print(f"  corpus      {result.n_documents} documents")
    if index:
        mib = index["index_bytes"] / 2**20
        dim = index["index_dimension"]
        print(f"  index       {cfg.retrieval.kind}: {cfg.retrieval.encoder}, dim {dim}, {mib:.1f} MiB")
    print(f"  dataset_hash {result.dataset_hash}")
    return 0
