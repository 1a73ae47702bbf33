"""`mem1 ppo`: PPO with the MEM1 attention mask from an SFT model; resumes from OUT/checkpoints."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mem1 ppo --config configs/local-tiny.yaml --data-dir runs/data --model runs/sft/model "
        "--out runs/ppo   (re-running with the same --out resumes from the latest checkpoint)"
    )
    parser.add_argument("--config", default="configs/local-tiny.yaml", help="pipeline config YAML (ppo:)")
    parser.add_argument("--data-dir", required=True, help="output of `mem1 compose`")
    parser.add_argument(
        "--model", required=True, help="the SFT model dir (actor, critic and reference start here)"
    )
    parser.add_argument("--out", required=True, help="output directory; the actor goes to OUT/model")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. ppo.steps=2"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mem1_core.commands.overrides import config_from_args
    from mem1_core.commands.sft import print_metrics
    from mem1_core.rl import ppo

    cfg = config_from_args(args).ppo
    model_dir = ppo.run(cfg, Path(args.data_dir), Path(args.model), Path(args.out), log=print_metrics)
    print(f"ppo model: {model_dir}")
    return 0
