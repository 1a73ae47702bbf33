"""Where a training step (sft, ppo) works: a folder keyed by what determines its result.

Why: a pipeline run killed mid-step used to leave its checkpoints in that run's own KFP output folder,
which no later run looks at, so a rerun trained from scratch. Keying the folder by the step's config
section and the digests of its inputs (data set, input model) lets a rerun with the same inputs find
the killed run's checkpoints, which sft.run and ppo.run already resume from bit-identically
(rl.trainer_resume, rl.checkpoint), and lets a rerun of a finished step reuse its model. Different
inputs get a different folder and start clean. The root is the run dir locally and the shared
workspace volume on a cluster (MEM1_CHECKPOINT_ROOT, set by the compiled pipeline).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mem1_core.models import MANIFEST, sha256_file
from mem1_core.rl.trainer_resume import first_difference

INPUTS_FILE = "inputs.json"  # what the key was made of, for a person and for "what changed"
DONE_FILE = "done.json"  # written last, once the model is complete: the step's last metrics


@dataclass(frozen=True)
class Finished:
    """What an earlier run with the same inputs left: its model and the last value of each metric."""

    model: Path
    metrics: dict[str, float]
    step: int


@dataclass(frozen=True)
class WorkDir:
    path: Path
    inputs: dict[str, Any]

    def finished(self) -> Finished | None:
        """The earlier run with these inputs, when it finished (done.json is written last), else None."""
        done = self.path / DONE_FILE
        if not done.is_file():
            return None
        data = json.loads(done.read_text(encoding="utf-8"))
        model = self.path / data["model"]
        if not (model / MANIFEST).is_file():
            return None
        return Finished(model, {k: float(v) for k, v in data["metrics"].items()}, int(data["step"]))

    def mark_done(self, model: Path, metrics: dict[str, float], step: int) -> None:
        """Record the finished step atomically: a kill before this leaves a run that resumes instead."""
        data = {"model": str(Path(model).relative_to(self.path)), "metrics": metrics, "step": step}
        tmp = self.path / f"{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / DONE_FILE)


def dataset_digest(data_dir: Path) -> str:
    """The composed data set's own hash (manifest.json), else a hash over its files."""
    manifest = Path(data_dir) / "manifest.json"
    if manifest.is_file():
        value = json.loads(manifest.read_text(encoding="utf-8")).get("dataset_hash")
        if value:
            return str(value)
    return _files_digest(Path(data_dir), skip=())


def model_digest(model_dir: Path) -> str:
    """The weights' sha256 as mem1.json records them (not rehashed: GBs at scale) and every other file
    except mem1.json itself, whose free-form summary may carry timings."""
    model_dir = Path(model_dir)
    manifest = model_dir / MANIFEST
    weights = {}
    if manifest.is_file():
        weights = json.loads(manifest.read_text(encoding="utf-8")).get("weights", {})
    rest = _files_digest(model_dir, skip=(MANIFEST, *weights))
    return hashlib.sha256(json.dumps([weights, rest], sort_keys=True).encode()).hexdigest()


def _files_digest(root: Path, skip: tuple[str, ...]) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file() and str(p.relative_to(root)) not in skip)
    lines = "".join(f"{p.relative_to(root)}:{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def step_inputs(kind: str, section: str, data_dir: Path, model_dir: Path | None) -> dict[str, Any]:
    return {
        "step": kind,
        "config": json.loads(section),
        "dataset": dataset_digest(data_dir),
        "model": model_digest(model_dir) if model_dir is not None else None,
    }


def open_workdir(root: Path, kind: str, section: str, data_dir: Path, model_dir: Path | None) -> WorkDir:
    """The keyed folder for these inputs under root/kind, created; prints one line saying whether the
    step resumes, reuses a finished model, or starts clean (and why)."""
    inputs = step_inputs(kind, section, data_dir, model_dir)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    work = WorkDir(Path(root) / kind / key, inputs)
    if (done := work.finished()) is not None:
        print(f"{kind}: finished in an earlier run with these inputs; reusing {done.model}", flush=True)
    elif (work.path / INPUTS_FILE).is_file():
        print(f"{kind}: resuming the earlier run with these inputs in {work.path}", flush=True)
    else:
        print(f"{kind}: starting clean in {work.path}: {_why_clean(work)}", flush=True)
        work.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(inputs, indent=2, sort_keys=True) + "\n"
        (work.path / INPUTS_FILE).write_text(text, encoding="utf-8")
    return work


def _why_clean(work: WorkDir) -> str:
    """Against the newest unfinished run of this step, what differs (its checkpoints do not apply)."""
    others = [
        p
        for p in work.path.parent.glob(f"*/{INPUTS_FILE}")
        if p.parent != work.path and not (p.parent / DONE_FILE).is_file()
    ]
    if not others:
        return "no earlier run with these inputs"
    newest = max(others, key=lambda p: p.stat().st_mtime)
    before = json.loads(newest.read_text(encoding="utf-8"))
    return f"the unfinished run in {newest.parent} had other inputs ({first_difference(before, work.inputs)})"
