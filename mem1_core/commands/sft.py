"""`mem1 sft`: optional pre-training, then SFT warm-up on teacher trajectories; writes OUT/model."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


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


def metrics_log() -> Callable[[dict[str, float], int], None]:
    """What `mem1 sft|ppo` does with each step's metrics: print them and, when MLFLOW_RUN_ID names a run
    (the launching step's nested run, set on torchrun and training-job workers), log them to it.

    Rank 0 alone logs (RANK as torchrun sets it; 0 in a plain process), so each step is logged once.
    """
    # lazy: `mem1 sft --help` must not pay for torch (distributed) and mlflow (tracking)
    from mem1_core import tracking
    from mem1_core.rl import distributed

    run = tracking.run_from_env() if distributed.env_rank() == 0 else None
    if run is None:
        return print_metrics

    def log(metrics: dict[str, float], step: int) -> None:
        print_metrics(metrics, step)
        run.log(metrics, step)

    print(f"logging metrics to MLflow run {run.run_id}", flush=True)
    return log


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 sft --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.rl import sft

    cfg = config_from_args(args).sft
    model_dir = sft.run(cfg, Path(args.data_dir), Path(args.out), log=metrics_log())
    print(f"sft model: {model_dir}")
    return 0
