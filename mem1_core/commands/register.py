"""`mem1 register`: register a model dir in MLflow; `champion` moves only when the promotion gate passes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mem1 register --config configs/local-tiny.yaml --model runs/ppo/model --eval-dir runs/eval "
        "--data-dir runs/data   (MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db)"
    )
    parser.add_argument(
        "--config", default="configs/local-tiny.yaml", help="pipeline config YAML (register:)"
    )
    parser.add_argument("--model", required=True, help="model dir written by sft/ppo")
    parser.add_argument("--eval-dir", required=True, help="output of `mem1 eval` (metrics.json)")
    parser.add_argument("--data-dir", required=True, help="output of `mem1 compose` (manifest.json)")
    parser.add_argument("--parent-run-id", default=None, help="MLflow pipeline run to nest under")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. register.gate_floor=0.1",
    )


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 register --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import config_from_args
    from mem1_core.registry import registration
    from mem1_core.registry.inputs import RegistryError
    from mem1_core.tracking import Tracker, TrackingError

    cfg = config_from_args(args)
    tracker = Tracker.from_config(cfg.tracking, cfg.run_dir)
    try:
        result = registration.run(
            cfg.register,
            Path(args.model),
            Path(args.eval_dir),
            Path(args.data_dir),
            tracker,
            parent_run_id=args.parent_run_id,
        )
    except (RegistryError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    state = "new version" if result.created else "already registered"
    print(f"{result.model_name} v{result.version} ({state}) at {tracker.tracking_uri}")
    print(f"gate: {'PROMOTED to champion' if result.promoted else 'not promoted'}: {result.gate_reason}")
    print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    return 0
