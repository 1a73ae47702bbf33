"""Resuming the HF-Trainer stages (pre-training, SFT) of a killed `sft.run` from their checkpoints.

Why: SFT of the learning bench's tiny model is over an hour on 2 CPU cores and a hub model's is GPU
hours; a preempted pod or a killed job should lose at most `sft.checkpoint_every` steps, as PPO does
(rl/checkpoint.py). The Trainer already saves and restores weights, optimizer, scheduler, RNG and the
data position; this module only decides where, and refuses to mix two different runs in one out_dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mem1_core.config import ConfigError

RUN_FILE = "sft_run.json"  # what an out_dir's (possibly unfinished) run was started with
PRETRAIN_DONE = "pretrain/done"  # a finished pre-training stage's weights and summary, under out_dir


def save_args(checkpoint_every: int) -> dict[str, Any]:
    """TrainingArguments for one stage: a checkpoint every N optimizer steps (the newest kept), or none."""
    if not checkpoint_every:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": checkpoint_every, "save_total_limit": 1}


def latest_checkpoint(stage_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` under stage_dir, or None to start fresh. The Trainer writes
    trainer_state.json last and only then deletes the older one, so a kill mid-save leaves a newer
    directory without a readable state: it is skipped for the one before."""
    found = []
    for d in Path(stage_dir).glob("checkpoint-*") if Path(stage_dir).is_dir() else ():
        number = d.name.removeprefix("checkpoint-")
        if number.isdigit() and _readable_state(d / "trainer_state.json"):
            found.append((int(number), d))
    return str(max(found)[1]) if found else None


def _readable_state(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, json.JSONDecodeError):
        return False


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """The first dotted field where two JSON-like values differ, as 'field: old then, new now'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {a!r} then, {b!r} now"


def claim_out_dir(out_dir: Path, started_with: dict[str, Any]) -> bool:
    """Record what this run is (config, data); True when out_dir holds an earlier run of the same one
    (resume it). A different one is refused, naming the first field that differs: its checkpoints
    would train the new run from the old run's weights."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != started_with:
            raise ConfigError(
                f"{path}: {out_dir} holds an unfinished run of another sft config or data set "
                f"({first_difference(before, started_with)}); resume it with the same settings, "
                "or use a new --out"
            )
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(started_with, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return False


def finish(out_dir: Path) -> None:
    """Once the model is saved the checkpoints are dead weight (optimizer states are 2-3x the model):
    remove them and the run record, so a later run into out_dir starts afresh."""
    out_dir = Path(out_dir)
    for stage in (out_dir / "trainer", out_dir / "pretrain"):
        for ckpt in stage.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(out_dir / PRETRAIN_DONE, ignore_errors=True)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # sft.trainer mem1_mask's (rl.checkpoint)
    (out_dir / RUN_FILE).unlink(missing_ok=True)
