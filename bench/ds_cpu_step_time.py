"""Seconds per PPO step on this machine: 1 process vs 2 CPU ranks under ZeRO-2 and ZeRO-3 (run once).

Usage: python -m bench.ds_cpu_step_time DATA_DIR MODEL_DIR OUT_DIR. Reads `ppo/step_s` from each run's
metrics history (rank 0; the step waits for the slowest rank) and prints the mean over the steps after
the first (which pays one-off set-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "advantage": "gae",
    "steps": 4,
    "prompts_per_step": 4,
    "group_size": 2,
    "minibatch_size": 8,
    "loss_agg": "sequence_mean",
    "checkpoint_every": 100,
    "agent": {"max_new_tokens": 8, "max_turns": 2, "temperature": 0.0, "batch_size": 1},
}


def run(name: str, ds: str | None, ranks: int, data: str, model: str, out: Path) -> float:
    cfg = {**BASE, **({"deepspeed_config": str(REPO / "configs" / ds)} if ds else {})}
    target = out / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd += ["-m", "mem1_core.cli", "ppo", "--data-dir", data, "--model", model, "--out", str(target)]
    cmd += [arg for k, v in cfg.items() if k != "agent" for arg in ("--set", f"ppo.{k}={v}")]
    cmd += [arg for k, v in cfg["agent"].items() for arg in ("--set", f"ppo.agent.{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    rows = json.loads((target / "metrics_history.json").read_text())
    later = [r["ppo/step_s"] for r in rows[1:]]
    return sum(later) / len(later)


def main() -> None:
    data, model, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    for name, ds, ranks in (
        ("one", None, 1),
        ("zero2", "deepspeed_zero2.json", 2),
        ("zero3", "deepspeed_zero3.json", 2),
    ):
        print(f"{name}: {run(name, ds, ranks, data, model, out):.2f} s/step", flush=True)


if __name__ == "__main__":
    main()
