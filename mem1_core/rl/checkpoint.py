"""Atomic PPO checkpoints: write everything under step_N.tmp, then rename to step_N.

A directory named step_N therefore always holds a complete checkpoint; a crash mid-write leaves
only a .tmp directory, which `latest` ignores and the next save replaces. What a checkpoint holds:
actor (model dir), critic (backbone + value_head.safetensors), optimizer and scheduler states, the
RNG states (python task sampler, torch, CUDA), the step, and the metrics history up to that step,
so a resumed run continues with no gap and no duplicate in its history; and checksums.json, the
sha256 of every file, checked by `verify` before a resume loads anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mem1_core.models import ModelIntegrityError, sha256_file

_STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "metrics_history.json"
CHECKSUMS_FILE = "checksums.json"


class CheckpointIntegrityError(ModelIntegrityError):
    """A checkpoint whose files do not match the sha256 sums recorded when it was written."""


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest(out_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return max(found)[1] if found else None


def rng_state(task_rng: random.Random) -> dict[str, Any]:
    state: dict[str, Any] = {"python": task_rng.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], task_rng: random.Random) -> None:
    task_rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    out_dir: Path,
    step: int,
    save_models: Any,  # Callable[[Path], None]: writes actor/ and critic/ under the given dir
    trainer_state: dict[str, Any],
    history: list[dict[str, float]],
) -> Path:
    """Write checkpoint step_N atomically and return its path."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_models(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    sums = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if final.exists():  # re-running a finished step: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_state(ckpt: Path) -> tuple[dict[str, Any], list[dict[str, float]]]:
    state_path = ckpt / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: checkpoint is missing its trainer state")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    history = json.loads((ckpt / HISTORY_FILE).read_text(encoding="utf-8"))
    return state, history


def verify(ckpt: Path) -> None:
    """Check every file of a checkpoint against checksums.json; raise naming the first file that differs.

    Resume trusts what it loads (optimizer state, critic, actor), so a corrupted or edited checkpoint
    must fail here, loudly, rather than train on from altered weights.
    """
    ckpt = Path(ckpt)
    path = ckpt / CHECKSUMS_FILE
    if not path.is_file():
        raise CheckpointIntegrityError(f"{path}: missing; a checkpoint without checksums cannot be trusted")
    try:
        recorded: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointIntegrityError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    present = {str(f.relative_to(ckpt)) for f in ckpt.rglob("*") if f.is_file()} - {CHECKSUMS_FILE}
    extra = sorted(present - recorded.keys())
    if extra:
        raise CheckpointIntegrityError(f"{ckpt}: file(s) {extra} are not recorded in {CHECKSUMS_FILE}")
    for name, expected in sorted(recorded.items()):
        f = ckpt / name
        if not f.is_file():
            raise CheckpointIntegrityError(f"{f}: listed in {CHECKSUMS_FILE} but missing")
        if sha256_file(f) != expected:
            raise CheckpointIntegrityError(
                f"{f}: sha256 does not match {path}; the checkpoint was modified or corrupted"
            )
