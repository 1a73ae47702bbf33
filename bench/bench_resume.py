"""Time lost to a SIGKILL in sft and in ppo of `mem1 pipeline local` on configs/local-tiny.yaml.

The tiny model and PPO as configured; SFT on 128 of the 512 training tasks with a checkpoint every 100
of its 536 steps (the full SFT, 2,148 steps with a checkpoint every 500, ran over 30 minutes on this
shared box); eval trimmed to one cell. Three pipeline runs in one run dir, one straight run beside:
  straight  never killed: each step's time S (its console line) and training time T (its progress bar),
            so its start-up and save, what a restart pays again, is S - T
  kill 1    SIGKILL to the whole process group half a checkpoint interval after sft's checkpoint 200
  kill 2    the rerun: sft resumes from checkpoint 200; SIGKILL half a step after ppo's step_2
  finish    the rerun: ppo resumes from step_2 and the pipeline ends
Lost now = the start-up again + the time since the resumed checkpoint was written (both measured);
lost before the keyed work dirs (components.workdir) = all the time in the step at the kill, since the
rerun started the step over. These use times measured within one run each: on a box shared with
other jobs, comparing wall times across runs (also reported) swings by minutes. Counts the runs
left RUNNING in MLflow at the end (each rerun marks the killed run's ones KILLED).
-> bench/results/resume.md   Run: .venv/bin/python bench/bench_resume.py   (~20 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "local-tiny.yaml"
SFT_CHECKPOINT = (
    "checkpoints/sft/*/trainer/checkpoint-200/trainer_state.json",
    200,
    100,
)  # glob, step, every
PPO_CHECKPOINT = ("checkpoints/ppo/*/checkpoints/step_2", 2, 1)
TRIM = [
    "compose.n_train_tasks=128", "sft.checkpoint_every=100",
    "eval.objectives=[2]", 'eval.modes=["mem1"]', "eval.n_tasks_per_objective=2",
]  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"^\s+ok\s+(\S+)\s+([\d.]+) s")
_BAR = re.compile(r"^\s*(?:ppo: *)?\d+%\|[^|]*\|\s*(\d+)/(\d+) \[(\d+):(\d+)")  # the trainers' bars


def _cmd(run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mem1_core.cli", "pipeline", "local", "--config", str(CONFIG)]
    cmd += ["--run-dir", str(run_dir)]
    for s in TRIM:
        cmd += ["--set", s]
    return cmd


def _env() -> dict[str, str]:
    # one thread: two torch processes on a shared 2-core box spin against each other (2 s a step, not 0.15)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _plain(path: Path) -> str:
    return _ANSI.sub("", path.read_text(errors="replace")).replace("\r", "\n")


def _step_times(console: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for line in console.splitlines() if (m := _LINE.match(line))}


def _train_seconds(log: str, total: int) -> float:
    """The elapsed time on the last progress bar with `total` steps: the training time of that step."""
    bars = [m for line in log.splitlines() if (m := _BAR.match(line)) and int(m.group(2)) == total]
    return float(int(bars[-1].group(3)) * 60 + int(bars[-1].group(4)))


def _run(
    run_dir: Path, out: Path, kill_in: str = "", trigger: str = "", after_s: float = 0.0
) -> tuple[dict[str, float], str]:
    """One pipeline run, its console's step times and its log. With kill_in, SIGKILL its process group
    after_s seconds after a file matching `trigger` appears; then the times also hold 'killed_at'
    (seconds into the step, from kfp.local's 'Executing task' line) and 'since_checkpoint'."""
    logs = run_dir / "logs"
    before = set(logs.glob("*.log"))
    with out.open("w") as console:
        proc = subprocess.Popen(
            _cmd(run_dir),
            stdout=console,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
            start_new_session=True,
        )
        started = seen = None
        while proc.poll() is None:
            time.sleep(0.1)
            new = set(logs.glob("*.log")) - before
            if not kill_in or not new:
                continue
            if started is None and f"Executing task '{kill_in}'" in _plain(next(iter(new))):
                started = time.monotonic()
            if started is not None and seen is None and list(run_dir.glob(trigger)):
                seen = time.monotonic()
            if seen is not None and time.monotonic() - seen >= after_s:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                now = time.monotonic()
                times = {
                    **_step_times(out.read_text()),
                    "killed_at": now - started,
                    "since_checkpoint": now - seen,
                }
                return times, _plain(next(iter(new)))
    log = _plain(next(iter(set(logs.glob("*.log")) - before)))
    if proc.returncode != 0 or kill_in:
        raise RuntimeError(f"pipeline rc {proc.returncode} (kill_in={kill_in}):\n{out.read_text()[-3000:]}")
    return _step_times(out.read_text()), log


def _running(run_dir: Path) -> int:
    # lazy: mlflow (~2 s) only once the runs are done
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, "attributes.status = 'RUNNING'"))


def main(results_dir: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mem1-resume-") as tmp:
        root = Path(tmp)
        straight, log = _run(root / "straight", root / "straight.txt")
        train = {"sft": _train_seconds(log, 536), "ppo": _train_seconds(log, 4)}
        per_step = {"sft": train["sft"] / 536, "ppo": train["ppo"] / 4}
        run_dir = root / "killed"
        sft_glob, sft_at, sft_every = SFT_CHECKPOINT
        kill1, _ = _run(run_dir, root / "kill1.txt", "sft", sft_glob, 0.5 * sft_every * per_step["sft"])
        ppo_glob, ppo_at, ppo_every = PPO_CHECKPOINT
        kill2, log2 = _run(run_dir, root / "kill2.txt", "ppo", ppo_glob, 0.5 * ppo_every * per_step["ppo"])
        finish, log3 = _run(run_dir, root / "finish.txt")
        assert f"/trainer/checkpoint-{sft_at}" in log2.split("sft: resumes from ", 1)[1].split("\n", 1)[0]
        assert re.search(rf"ppo: resumed from \S+/step_{ppo_at} at step {ppo_at}", log3), "ppo resumed step_2"
        console = (root / "kill2.txt").read_text() + (root / "finish.txt").read_text()
        results: dict[str, float] = {}
        for step, killed, rerun in (("sft", kill1, kill2), ("ppo", kill2, finish)):
            restart = straight[step] - train[step]
            results |= {
                f"{step}_straight_s": straight[step],
                f"{step}_restart_s": restart,
                f"{step}_killed_at_s": killed["killed_at"],
                f"{step}_since_checkpoint_s": killed["since_checkpoint"],
                f"{step}_lost_s": restart + killed["since_checkpoint"],
                f"{step}_lost_before_s": killed["killed_at"],
                f"{step}_rerun_s": rerun[step],
                f"{step}_lost_wall_s": killed["killed_at"] + rerun[step] - straight[step],
            }
        results["runs_marked_killed"] = float(
            sum(int(n) for n in re.findall(r"marked (\d+) MLflow run", console))
        )
        results["runs_left_running"] = float(_running(run_dir))
    _write_report(results_dir, results)
    return results


def _write_report(results_dir: Path, r: dict[str, float]) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Time lost to a SIGKILL of `mem1 pipeline local` (configs/local-tiny.yaml, SFT on 128 tasks)",
        "",
        "| step | straight | restart (start-up + save) | killed after | since the checkpoint | lost now "
        "| lost before (step redone) | wall check: kill + rerun - straight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in ("sft", "ppo"):
        lines.append(
            f"| {s} | {r[f'{s}_straight_s']:.1f} s | {r[f'{s}_restart_s']:.1f} s "
            f"| {r[f'{s}_killed_at_s']:.1f} s "
            f"| {r[f'{s}_since_checkpoint_s']:.1f} s | **{r[f'{s}_lost_s']:.1f} s** "
            f"| {r[f'{s}_lost_before_s']:.1f} s | {r[f'{s}_lost_wall_s']:.1f} s |"
        )
    lines += [
        "",
        f"Runs the reruns marked KILLED: {r['runs_marked_killed']:.0f} (2 per kill: parent and step); "
        f"left RUNNING at the end: {r['runs_left_running']:.0f}.",
        "",
    ]
    (results_dir / "resume.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    print(json.dumps(main(REPO / "bench" / "results"), indent=2))
