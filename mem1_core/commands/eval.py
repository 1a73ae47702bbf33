"""`mem1 eval`: the evaluation grid (objectives x memory modes); tables, plots and sample episodes."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mem1 eval --config configs/local-tiny.yaml --data-dir runs/data --model runs/ppo/model "
        "--out runs/eval   (--model oracle evaluates the scripted teacher)"
    )
    parser.add_argument("--config", default="configs/local-tiny.yaml", help="pipeline config YAML (eval:)")
    parser.add_argument("--data-dir", required=True, help="output of `mem1 compose`")
    parser.add_argument("--model", required=True, help="a model dir, a hub id, or 'oracle'")
    parser.add_argument("--out", required=True, help="output directory for metrics.json, table.md, plots")
    parser.add_argument("--retrieval-url", default=None, help="use a retrieval server instead of BM25")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. eval.n_tasks_per_objective=4",
    )


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 eval --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.eval import evaluate

    cfg = config_from_args(args)
    result = evaluate.run(
        cfg.eval,
        Path(args.data_dir),
        args.model,
        Path(args.out),
        cfg.sft.model,
        retrieval_url=args.retrieval_url,
    )
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"), end="")
    for s in result.skipped:
        print(f"skipped {s['objectives']} objectives: {s['reason']}")
    print(f"evaluation: {result.out_dir} ({result.seconds:.1f}s)")
    return 0
