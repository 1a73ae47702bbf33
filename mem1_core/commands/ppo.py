"""`mem1 ppo`: PPO with the MEM1 attention mask from an SFT model; resumes from OUT/checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mem1 ppo --config configs/local-tiny.yaml --data-dir runs/data --model runs/sft/model "
        "--out runs/ppo   (re-running with the same --out resumes from the latest checkpoint). "
        "Each step prints its sampled reward and moving average, approx_kl and clipfrac (how far the "
        "update moved the policy), group reward std and the share of groups with no signal; set "
        "ppo.eval_every=N for greedy held-out EM every N steps, drawn in OUT/learning_curve.png"
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
    # lazy: `mem1 ppo --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.commands.sft import metrics_log
    from mem1_core.eval.plots import learning_curve
    from mem1_core.rl import ppo

    cfg = config_from_args(args).ppo
    model_dir = ppo.run(cfg, Path(args.data_dir), Path(args.model), Path(args.out), log=metrics_log())
    history = json.loads((model_dir / ppo.HISTORY_FILE).read_text(encoding="utf-8"))
    print(f"ppo model: {model_dir}")
    print(f"learning curve: {learning_curve(history, Path(args.out) / 'learning_curve.png')}")
    return 0
