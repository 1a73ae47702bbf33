"""A `mem1 pipeline local` killed with SIGKILL (its whole process group) during sft, then run again.

The rerun finds sft's checkpoints in the folder keyed by sft's inputs under the run dir
(components.workdir), resumes pre-training from the newest complete one instead of starting over, and
ends with the weights of an sft never killed. The killed run's MLflow runs (the parent and sft) are
marked KILLED when the rerun starts, so none is left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rl_helpers import max_weight_difference

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "data" / "pipeline-smallest.yaml"
# pre-training long enough to be killed in, checkpointed every 2 steps (as tests/test_faults.py)
SETS = {
    "sft.checkpoint_every": 2, "sft.pretrain.steps": 30, "sft.pretrain.seq_len": 32,
    "sft.pretrain.batch_size": 2, "sft.pretrain.warmup_steps": 1,
}  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _pipeline_cmd(run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mem1_core.cli", "pipeline", "local", "--config", str(CONFIG)]
    cmd += ["--run-dir", str(run_dir)]
    for k, v in SETS.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _kill_group_when(cmd: list[str], ready: str, root: Path, log_path: Path) -> None:
    """Start cmd in its own process group; SIGKILL the whole group once a file matching `ready` exists."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + 240
        try:
            while not list(root.glob(ready)):
                assert proc.poll() is None, f"it ended before it could be killed:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no {ready} in time:\n{log_path.read_text()}"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_pipeline_resumes_sft_and_ends_as_a_run_never_killed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs"
    pretrain_ckpt = "checkpoints/sft/*/pretrain/checkpoint-*/trainer_state.json"
    _kill_group_when(_pipeline_cmd(run_dir), pretrain_ckpt, run_dir, tmp_path / "killed.log")
    (work,) = (run_dir / "checkpoints" / "sft").iterdir()
    assert not (work / "done.json").exists() and not (work / "model").exists(), "sft did not finish"

    t0 = time.monotonic()
    rerun = subprocess.run(_pipeline_cmd(run_dir), capture_output=True, text=True, env=_env(), cwd=REPO)
    rerun_s = time.monotonic() - t0
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    out = rerun.stdout
    assert f"sft: resuming the earlier run with these inputs in {work}" in out, out
    assert "ppo: starting clean" in out and "no earlier run with these inputs" in out, out
    assert "marked 2 MLflow run(s) KILLED whose process is gone: " in out, out
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("pipeline-*.log"))
    assert f"sft: pre-training resumes from {work}/pretrain/checkpoint-" in logs
    assert (work / "done.json").is_file() and not list(work.rglob("checkpoint-*")), "finished, cleaned up"

    # No run is left RUNNING: the killed parent and sft runs are KILLED, saying when and why.
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mem1-e2e")
    runs = client.search_runs([exp.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert sorted(r.data.tags["mem1.kind"] for r in killed) == ["pipeline", "step"]
    for r in killed:
        assert "is no longer running" in r.data.tags["mem1.killed_reason"], r.data.tags
        assert r.data.tags["mem1.killed_at"].endswith("Z")

    # The resumed sft equals an sft never killed: `mem1 sft` on the same data with the same section.
    inputs = json.loads((work / "inputs.json").read_text())
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"sft": inputs["config"]}))
    data = next((run_dir / "kfp").glob("*/compose/dataset"))
    straight = tmp_path / "straight"
    cmd = [sys.executable, "-m", "mem1_core.cli", "sft", "--config", str(config), "--data-dir", str(data)]
    cmd += ["--out", str(straight)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    worst = max_weight_difference(straight / "model", work / "model")
    assert worst < 1e-6, f"the killed-and-resumed sft differs from a straight one by {worst}"
    print(f"rerun {rerun_s:.1f}s; max abs weight difference to a straight sft: {worst}")


def test_the_work_dir_is_keyed_by_the_inputs_and_says_what_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same inputs: the same folder (resume, then reuse once finished); other inputs: a new folder, and
    one line naming what differs. No training: the folder logic alone."""
    from mlflow_server import make_data_dir, make_model_dir

    from components.workdir import open_workdir
    from mem1_core.config import PPOConfig

    data = make_data_dir(tmp_path / "data")
    model = make_model_dir(tmp_path / "sft", data)
    root = tmp_path / "checkpoints"
    section = json.dumps(PPOConfig().model_dump(mode="json"), sort_keys=True)
    capsys.readouterr()  # what building the assets printed

    first = open_workdir(root, "ppo", section, data, model)
    clean = f"ppo: starting clean in {first.path}: no earlier run with these inputs\n"
    assert capsys.readouterr().out == clean
    again = open_workdir(root, "ppo", section, data, model)
    assert again.path == first.path
    assert capsys.readouterr().out == f"ppo: resuming the earlier run with these inputs in {first.path}\n"

    other = json.dumps(PPOConfig(steps=7).model_dump(mode="json"), sort_keys=True)
    moved = open_workdir(root, "ppo", other, data, model)
    assert moved.path != first.path
    assert capsys.readouterr().out == (
        f"ppo: starting clean in {moved.path}: the unfinished run in {first.path} had other inputs "
        "(config.steps: 20 then, 7 now)\n"
    )

    (first.path / "model").mkdir()
    (first.path / "model" / "mem1.json").write_text("{}")
    first.mark_done(first.path / "model", {"ppo/reward": 0.5}, 3)
    reused = open_workdir(root, "ppo", section, data, model).finished()
    assert reused is not None and (reused.model, reused.metrics, reused.step) == (
        first.path / "model",
        {"ppo/reward": 0.5},
        3,
    )
    assert capsys.readouterr().out.startswith("ppo: finished in an earlier run with these inputs; reusing ")

    retrained = make_model_dir(tmp_path / "sft2", data, seed=1)  # another input model: another folder
    assert open_workdir(root, "ppo", other, data, retrained).path not in (first.path, moved.path)
    assert "had other inputs (model: " in capsys.readouterr().out
