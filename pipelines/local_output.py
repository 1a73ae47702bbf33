"""What `mem1 pipeline local` shows a person: one line per step, then a summary; everything else
(kfp.local's executor JSON, each step's own output, progress bars) goes to a log file in the run dir.

kfp.local writes its task logs and the steps' streamed output through `sys.stdout`; `StepLog` stands
in for it during the run, copies every byte to the log and turns kfp.local's "Executing task" /
"Task ... finished" lines into one line per step, with the step's key metric read from the task's
executor output. The formatting functions are pure, so the summary is tested without a pipeline.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# what a training step says about its keyed work dir (components.workdir): shown, since it says whether
# a rerun resumed, reused a finished model, or started clean and why
_WORKDIR = re.compile(r"\b((?:sft|ppo): (?:starting clean|resuming|finished in an earlier run) .*)")


def _num(meta: Mapping[str, Any], key: str) -> float | None:
    value = meta.get(key)
    return float(value) if isinstance(value, int | float) else None


def _artifact_meta(out: Mapping[str, Any], name: str) -> dict[str, Any]:
    arts = ((out.get("artifacts") or {}).get(name) or {}).get("artifacts") or [{}]
    return dict(arts[0].get("metadata") or {})


def key_metric(task: str, out: Mapping[str, Any]) -> str:
    """The one figure worth a glance for each step, from its executor_output.json ('' when none)."""
    if task == "prepare-run":
        run_id = (out.get("parameterValues") or {}).get("parent_run_id", "")
        return f"MLflow run {run_id[:12]}" if run_id else ""
    if task == "compose":
        m = _artifact_meta(out, "stats")
        parts = [f"{int(m[k])} {label}" for k, label in (("train_tasks", "train"), ("eval_tasks", "eval"))]
        return f"{' / '.join(parts)} tasks, {int(m.get('documents', 0))} documents" if m else ""
    if task in ("sft", "ppo"):
        m = _artifact_meta(out, "metrics")
        keys = ("sft/loss", "pretrain/loss") if task == "sft" else ("ppo/reward", "ppo/em", "ppo/kl")
        return "  ".join(f"{k.split('/')[1]} {m[k]:.3f}" for k in keys if _num(m, k) is not None)
    if task == "eval":
        m = _artifact_meta(out, "metrics")
        cells = sorted(
            (int(k.split(".")[1][1:]), v)
            for k, v in m.items()
            if k.startswith("em.n") and k.endswith(".mem1")
        )
        return "  ".join(f"EM@{n} {v:.3f}" for n, v in cells[:3]) + (" (mem1)" if cells else "")
    if task == "register":
        try:
            result = json.loads((out.get("parameterValues") or {}).get("Output") or "{}")
        except json.JSONDecodeError:
            return ""
        if not result:
            return ""
        alias = "champion" if result.get("promoted") else "candidate only"
        return f"{result.get('model_uri')} ({alias}: {result.get('gate_reason', '')})"
    if task.startswith("record-step"):
        return "logged to MLflow"
    return ""


def step_line(task: str, seconds: float, status: str, metric: str) -> str:
    mark = "ok" if status == "SUCCESS" else status
    return f"  {mark:<7} {task:<16} {seconds:6.1f} s  {metric}".rstrip()


class StepLog(io.TextIOBase):
    """A stdout stand-in: every write goes to `log`; each finished kfp.local task prints one line."""

    def __init__(self, log: TextIO, console: TextIO, kfp_root: Path) -> None:
        self.log = log
        self.console = console
        self.kfp_root = kfp_root
        self.tty = console.isatty()
        self._partial = ""
        self._started: dict[str, float] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._scan(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _scan(self, line: str) -> None:
        if m := _START.search(line):
            self._started[m.group(1)] = time.monotonic()
            if self.tty:  # one line that the step's result overwrites
                self.console.write(f"  ...     {m.group(1):<16} running")
                self.console.flush()
        elif m := _WORKDIR.search(line):
            self.console.write(("\r\x1b[K" if self.tty else "") + f"          {m.group(1)}\n")
            self.console.flush()
        elif m := _END.search(line):
            task, status = m.group(1), m.group(2)
            seconds = time.monotonic() - self._started.get(task, time.monotonic())
            line_out = step_line(task, seconds, status, key_metric(task, self._executor_output(task)))
            self.console.write(("\r\x1b[K" if self.tty else "") + line_out + "\n")
            self.console.flush()

    def _executor_output(self, task: str) -> dict[str, Any]:
        found = sorted(self.kfp_root.glob(f"*/{task}/executor_output.json"), key=lambda p: p.stat().st_mtime)
        try:
            return json.loads(found[-1].read_text(encoding="utf-8")) if found else {}
        except (OSError, json.JSONDecodeError):
            return {}


# ---------------------------------------------------------------------------------------- summary


@dataclass
class Summary:
    ok: bool
    seconds: float
    log_path: Path
    tracking_uri: str
    default_uri: str  # the URI a new shell gets with MLFLOW_TRACKING_URI unset
    bin_dir: str  # where `mem1` and `mlflow` are, as the user should type it
    grid: list[dict[str, Any]] = field(default_factory=list)
    eval_dir: Path | None = None
    registered: str = ""  # models:/name/3 (champion, candidate)
    model_ref: str = ""  # models:/name@champion (or @candidate)
    questions: Sequence[str] = ()


def em_table(grid: Sequence[Mapping[str, Any]]) -> list[str]:
    """EM per objectives (rows) x memory mode (columns), as aligned text."""
    modes = list(dict.fromkeys(str(r["mode"]) for r in grid))
    objectives = sorted({int(r["objectives"]) for r in grid})
    cell = {(int(r["objectives"]), str(r["mode"])): r.get("em") for r in grid}
    width = max([10, *(len(m) for m in modes)])
    lines = ["  objectives" + "".join(f"{m:>{width + 2}}" for m in modes)]
    for n in objectives:
        values = (cell.get((n, m)) for m in modes)
        lines.append(
            f"  {n:>10}"
            + "".join(
                f"{v:>{width + 2}.3f}" if isinstance(v, int | float) else f"{'-':>{width + 2}}"
                for v in values
            )
        )
    return lines


def agent_command(s: Summary) -> str:
    """A `mem1 agent` command that works pasted into a new shell in the same directory."""
    env = "" if s.tracking_uri == s.default_uri else f"MLFLOW_TRACKING_URI={shlex.quote(s.tracking_uri)} "
    args = " ".join(f"--question {shlex.quote(q)}" for q in s.questions)
    return f"{env}{s.bin_dir}mem1 agent --model {s.model_ref} {args}".rstrip()


def summary_lines(s: Summary) -> list[str]:
    head = "finished" if s.ok else "FAILED"
    lines = ["", f"== pipeline {head} in {s.seconds / 60:.1f} min; full log: {s.log_path}"]
    if not s.ok:
        return lines
    if s.grid:
        lines += [
            "",
            "EM (exact match, mean over each task's objectives) per memory mode:",
            *em_table(s.grid),
        ]
    if s.eval_dir is not None:
        lines += [
            "",
            f"plots:    {s.eval_dir}/*.png",
            f"report:   {s.eval_dir / 'report.html'}",
            f"table:    {s.eval_dir / 'table.md'} (F1, peak tokens, dependency, seconds per task)",
        ]
    lines += ["", f"registered: {s.registered or '(nothing; see the log)'}"]
    lines += ["", "open MLflow:", f"  {s.bin_dir}mlflow ui --backend-store-uri {shlex.quote(s.tracking_uri)}"]
    if s.model_ref:
        lines += ["ask the agent:", f"  {agent_command(s)}"]
    return lines


def display_dir(bin_dir: Path, cwd: Path) -> str:
    """`bin_dir` relative to `cwd` when inside it (`.venv/bin/`), else absolute; with a trailing slash."""
    try:
        rel = bin_dir.resolve().relative_to(cwd.resolve())
        return f"{rel}/" if str(rel) != "." else "./"
    except ValueError:
        return f"{bin_dir.resolve()}/"
