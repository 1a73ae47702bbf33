"""`mem1 sft`: optional pre-training, then SFT warm-up on teacher trajectories; writes OUT/model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Example: mem1 sft --config configs/local-tiny.yaml --data-dir runs/data --out runs/sft"
    parser.add_argument("--config", default="configs/local-tiny.yaml", help="pipeline config YAML (sft:)")
    parser.add_argument("--data-dir", required=True, help="output of `mem1 compose`")
    parser.add_argument("--out", required=True, help="output directory; the model goes to OUT/model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. sft.epochs=1 or sft.pretrain.steps=500",
    )


def print_metrics(metrics: dict[str, float], step: int) -> None:
    """One line per logged step, named by its stage (pretrain, sft, ppo): each counts steps from 1."""
    stages = sorted({k.split("/", 1)[0] for k in metrics if "/" in k})
    shown = " ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in sorted(metrics.items()))
    print(f"{'+'.join(stages) or 'sft'} step {step}: {shown}", flush=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    # lazy: `mem1 sft --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.rl import sft

    cfg = config_from_args(args).sft
    model_dir = sft.run(cfg, Path(args.data_dir), Path(args.out), log=print_metrics)
    print(f"sft model: {model_dir}")
    return 0
