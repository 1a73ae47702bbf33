"""Training launch: SFT or PPO in this process, under torchrun on one node, or as a multi-node job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from components import pod_env
from components.mlflow_runs import nested_run
from components.trainjob import run_distributed_step
from components.workdir import open_workdir
from components.worker import step_command, write_step_config
from mem1_core.config import PPOConfig, SFTConfig, parse_section
from mem1_core.rl.trainer_log import LogFn

TAG_REUSED = "mem1.reused_model"  # on a step run that reused the model of an earlier run with its inputs


def copy_dir(src: str | Path, dst: str | Path) -> Path:
    """Copy a directory's contents into `dst` (created); KFP output paths may already exist."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def train(
    kind: str,
    section: str,
    data_dir: Path,
    out_dir: Path,
    model_dir: Path | None,
    log: LogFn | None,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    launcher: str = "trainjob",
    worker_env: Mapping[str, str] | None = None,
) -> Path:
    """Run SFT or PPO: in this process on one device, torchrun on one node, a training job on many.

    Returns the trained model directory. The multi-node path goes through components.trainjob, which
    creates a TrainJob / PyTorchJob whose workers share the workspace volume with this pod.
    `worker_env` is set on the worker processes (torchrun's or the job's): `log` cannot reach them, so
    the MLflow run to log to travels there (RunHandle.worker_env).
    """
    if kind not in ("sft", "ppo"):
        raise ValueError(f"unknown training step {kind!r}: use sft or ppo")
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"num_nodes must be >= 1 and gpus_per_node >= 0, got {num_nodes}, {gpus_per_node}")
    if kind == "ppo" and model_dir is None:
        raise ValueError("ppo needs the SFT model directory")
    if num_nodes > 1:
        # a keyed work dir on the shared volume (the cluster's default) is where the workers resume
        workspace = os.environ.get(pod_env.WORKSPACE)
        on_volume = bool(workspace) and out_dir.resolve().is_relative_to(Path(str(workspace)).resolve())
        return run_distributed_step(
            kind=kind,
            section=section,
            data_dir=data_dir,
            model_dir=model_dir,
            out_dir=out_dir,
            num_nodes=num_nodes,
            gpus_per_node=gpus_per_node,
            launcher=launcher,
            worker_env=worker_env,
            work_dir=out_dir if on_volume else None,
        )
    if gpus_per_node > 1:
        return _torchrun_single_node(kind, section, data_dir, model_dir, out_dir, gpus_per_node, worker_env)
    if kind == "sft":
        from mem1_core.rl import sft  # torch, trl: heavy, loaded only in a training pod

        return Path(sft.run(parse_section(SFTConfig, section, "sft"), data_dir, out_dir, log=log))
    from mem1_core.rl import ppo  # torch, deepspeed: heavy, loaded only in a training pod

    assert model_dir is not None
    return Path(ppo.run(parse_section(PPOConfig, section, "ppo"), data_dir, model_dir, out_dir, log=log))


def train_step(
    kind: str,
    section: str,
    tracking_uri: str,
    parent_run_id: str,
    data_dir: Path,
    model_dir: Path | None,
    out_model: str | Path,
    num_nodes: int,
    gpus_per_node: int,
    launcher: str,
) -> tuple[str, dict[str, float]]:
    """The body of the sft and ppo components: `train` inside a nested MLflow run named `kind`.

    The trained model is copied into the component's output path `out_model`. The step works in a
    folder keyed by its inputs under MEM1_CHECKPOINT_ROOT (components.workdir), so a rerun after a
    kill resumes from the checkpoints there and a rerun of a finished step reuses its model; without
    that variable, in a folder next to `out_model`.

    Returns the MLflow run id and the last value of every metric, for the KFP Metrics output: logged
    here in one process; under torchrun or a job, rank 0 of the workers logs them to the run and they
    are read back from it.
    """
    # heavy (torch, matplotlib): loaded only inside a training pod, not where the pipeline is compiled
    from mem1_core.eval.plots import learning_curve
    from mem1_core.rl.ppo import HISTORY_FILE

    root = os.environ.get(pod_env.CHECKPOINT_ROOT)
    workdir = open_workdir(Path(root), kind, section, data_dir, model_dir) if root else None
    work = workdir.path if workdir else Path(out_model).parent / f"{kind}-work"
    with nested_run(tracking_uri, parent_run_id, kind, json.loads(section)) as run:
        done = workdir.finished() if workdir else None
        if done is not None:  # a rerun of a finished step: its model and metrics, not the work again
            run.set_tags({TAG_REUSED: str(done.model)})
            run.log(done.metrics, done.step)
            out, last, last_step = done.model, dict(done.metrics), done.step
        else:
            last, last_step = {}, 0

            def log(values: dict[str, float], step_index: int) -> None:
                nonlocal last_step
                last.update(values)
                last_step = max(last_step, int(step_index))
                run.log(values, step_index)

            env = run.worker_env()
            out = train(
                kind, section, data_dir, work, model_dir, log, num_nodes, gpus_per_node, launcher, env
            )
            if not last:  # the workers (torchrun, a training job) logged to the run themselves
                last = run.last_metrics()
            if workdir:
                workdir.mark_done(out, last, last_step)
        history = out / HISTORY_FILE
        if history.is_file():  # PPO: its learning curve beside the step's metrics
            rows = json.loads(history.read_text(encoding="utf-8"))
            run.log_artifact(learning_curve(rows, work / "learning_curve.png"))
        copy_dir(out, out_model)
        return run.run_id, last


def _torchrun_single_node(
    kind: str,
    section: str,
    data_dir: Path,
    model_dir: Path | None,
    out_dir: Path,
    gpus: int,
    worker_env: Mapping[str, str] | None = None,
) -> Path:
    config_path = write_step_config(kind, section, out_dir.parent / f"{kind}-config.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    cmd += step_command(kind, config_path, data_dir, model_dir, out_dir)
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **(worker_env or {})})
    return out_dir / "model"
