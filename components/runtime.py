"""What the component bodies share: config merging, MLflow nested runs, artifact writing, training launch.

Component functions are serialised by KFP and run alone in the image, so they stay a few lines long
and import this module (installed with the project) inside their body. Nothing here imports KFP: the
functions take plain paths and strings, so they are testable without a pipeline.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mem1_core.config import PipelineConfig
from mem1_core.rl.trainer_log import LogFn

if TYPE_CHECKING:
    from mem1_core.tracking import RunHandle, Tracker


# Keys of PipelineConfig that the pipeline's own parameters may override (beyond the free `overrides`).
SECTIONS = ("compose", "sft", "ppo", "eval", "registry")


def merge_config(
    config_json: str,
    overrides: dict[str, Any] | None = None,
    base_model: str = "",
    sources_json: str = "",
    train_objectives: list[int] | None = None,
    eval_objectives: list[int] | None = None,
    em_floor: float = -1.0,
    domain: str = "",
    tracking_uri: str = "",
) -> PipelineConfig:
    """The whole run's config: the config JSON, then dotted `overrides`, then the named parameters.

    Empty strings, empty lists and a negative floor mean "keep the config's value", so a pipeline run
    with only defaults reproduces the compiled-in config exactly.
    """
    from pydantic import ValidationError

    from mem1_core.config import ConfigError, format_validation_error

    try:
        data: dict[str, Any] = json.loads(config_json) if config_json.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"pipeline parameter config_json: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("pipeline parameter config_json: must be a JSON object of step sections")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    if overrides and "domain" in overrides and "compose.domain" not in overrides:
        domain = domain or str(overrides["domain"])  # one domain: the compose section follows it
    if base_model:
        _set_dotted(data, "sft.model.base_model", base_model)
    if sources_json.strip():
        try:
            _set_dotted(data, "compose.sources", json.loads(sources_json))
        except json.JSONDecodeError as e:
            raise ConfigError(f"pipeline parameter sources_json: not valid JSON: {e}") from None
    if train_objectives:
        _set_dotted(data, "compose.train_objectives", list(train_objectives))
    if eval_objectives:
        _set_dotted(data, "compose.eval_objectives", list(eval_objectives))
        _set_dotted(data, "eval.objectives", list(eval_objectives))
    if em_floor >= 0:
        _set_dotted(data, "registry.em_floor", em_floor)
    if domain:
        data["domain"] = domain
        _set_dotted(data, "compose.domain", domain)  # compose writes it into the manifest for later steps
    if tracking_uri:
        _set_dotted(data, "tracking.tracking_uri", tracking_uri)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "pipeline parameters")) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    target = data
    for key in parents:
        nxt = target.setdefault(key, {})
        if not isinstance(nxt, dict):
            from mem1_core.config import ConfigError

            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        target = nxt
    target[leaf] = value


def section_json(cfg: PipelineConfig, name: str) -> str:
    """One step's section as the canonical JSON string the step's component receives (cache-stable)."""
    return json.dumps(getattr(cfg, name).model_dump(mode="json"), sort_keys=True)


def flatten(prefix: str, value: Any, out: dict[str, float] | None = None) -> dict[str, float]:
    """Numeric leaves of nested dicts as 'a.b.c' -> float (what MLflow and KFP Metrics accept)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool | int | float):
        out[prefix] = float(value)
    return out


def eval_metrics(data: dict[str, Any]) -> dict[str, float]:
    """metrics.json of the eval step as flat keys: grid rows become '<metric>.n<objectives>.<mode>'."""
    out: dict[str, float] = {}
    for row in data.get("grid") or []:
        if isinstance(row, dict) and "objectives" in row and "mode" in row:
            tag = f"n{row['objectives']}.{row['mode']}"
            for k, v in row.items():
                if k not in ("objectives", "mode") and isinstance(v, int | float) and not isinstance(v, bool):
                    out[mlflow_metric_key(f"{k}.{tag}")] = float(v)
    rest = {k: v for k, v in data.items() if k not in ("grid", "config")}
    out.update({mlflow_metric_key(k): v for k, v in flatten("", rest).items()})
    return out


def registration_markdown(result: dict[str, Any]) -> str:
    """The register step's report for the KFP UI."""
    lines = ["| field | value |", "|---|---|"]
    for key in (
        "model_name",
        "version",
        "model_uri",
        "promoted",
        "gate_reason",
        "candidate_em",
        "champion_em",
    ):
        lines.append(f"| {key} | {result.get(key)} |")
    return "\n".join(lines) + "\n"


def mlflow_metric_key(key: str) -> str:
    """MLflow keys allow [A-Za-z0-9_-./ ] only; replace anything else (e.g. ':' in 'truncate:1')."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


# ---------------------------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(tracking_uri: str) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError(
            "no MLflow tracking URI: set the pipeline parameter mlflow_uri or MLFLOW_TRACKING_URI"
        )
    return uri


def tracker_for(tracking_uri: str, experiment: str = "mem1") -> Tracker:
    """A Tracker for a component; with SQLite, artifacts go next to the database (runs/mlartifacts)."""
    from mem1_core.tracking import Tracker, is_local_uri

    uri = resolve_tracking_uri(tracking_uri)
    artifacts = None
    if uri.startswith("sqlite:///") and is_local_uri(uri):
        artifacts = (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return Tracker(uri, experiment, artifacts)


TAG_KFP_JOB = "mem1.kfp_job_id"


def start_parent_run(
    tracking_uri: str, experiment: str, run_name: str, config: dict[str, Any], pipeline_job_id: str = ""
) -> str:
    """Create the pipeline's parent MLflow run and leave it RUNNING; the exit handler closes it.

    (mem1_core.tracking's context manager closes the run on exit, but here the run must outlive this
    step: every later step nests under it, in other pods.)
    """
    from mlflow.entities import Param

    from mem1_core import tracking

    tracker = tracker_for(tracking_uri, experiment)
    params = tracking.flatten_params(config)
    tracking.validate_params(params)
    tags = {"mem1.kind": "pipeline", "mem1.git_commit": tracking.git_commit(), TAG_KFP_JOB: pipeline_job_id}
    run = tracker.call(
        lambda: tracker.client.create_run(tracker.experiment_id, run_name=run_name, tags=tags),
        f"creating the pipeline run {run_name!r}",
    )
    run_id = run.info.run_id
    tracker.call(lambda: tracker.client.set_tag(run_id, tracking.TAG_PIPELINE_RUN, run_id), "tagging the run")
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), tracking.PARAMS_PER_BATCH):
        chunk = items[i : i + tracking.PARAMS_PER_BATCH]
        tracker.call(lambda c=chunk: tracker.client.log_batch(run_id, params=c), "logging pipeline params")
    return run_id


def finish_parent_run(tracking_uri: str, pipeline_job_id: str, state: str) -> str | None:
    """Close the parent run tagged with this KFP job id (SUCCEEDED -> FINISHED, else FAILED).

    Returns its run id, or None when prepare_run never created one (it failed first).
    """
    tracker = tracker_for(tracking_uri)
    client = tracker.client
    exps = tracker.call(lambda: client.search_experiments(), "listing experiments")
    runs = tracker.call(
        lambda: client.search_runs(
            [e.experiment_id for e in exps], filter_string=f"tags.`{TAG_KFP_JOB}` = '{pipeline_job_id}'"
        ),
        "finding the pipeline run",
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    tracker.call(lambda: client.set_tag(run_id, "mem1.pipeline_state", state), "tagging the pipeline run")
    tracker.call(lambda: client.set_terminated(run_id, status), "closing the pipeline run")
    return run_id


@contextmanager
def nested_run(
    tracking_uri: str, parent_run_id: str, step: str, config: dict[str, Any] | None = None
) -> Iterator[RunHandle]:
    """A nested MLflow run for one step under the pipeline's parent run; FAILED if the body raises."""
    with tracker_for(tracking_uri).step_run(step, config or {}, parent_run_id) as handle:
        yield handle


# ------------------------------------------------------------------------------------------- artifacts


def copy_dir(src: str | Path, dst: str | Path) -> Path:
    """Copy a directory's contents into `dst` (created); KFP output paths may already exist."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def html_report(title: str, markdown_table: str, images: list[Path]) -> str:
    """A self-contained HTML page (PNG plots inlined) for the KFP UI's HTML visualisation."""
    import html

    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1><pre>{html.escape(markdown_table)}</pre>")
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(img.name)}</h3><img src='data:image/png;base64,{data}'/>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------- training


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
) -> Path:
    """Run SFT or PPO: in this process on one device, torchrun on one node, a training job on many.

    Returns the trained model directory. The multi-node path goes through pipelines.trainjob, which
    creates a TrainJob / PyTorchJob whose workers share the workspace volume with this pod.
    """
    from mem1_core.config import PPOConfig, SFTConfig, parse_section

    if kind not in ("sft", "ppo"):
        raise ValueError(f"unknown training step {kind!r}: use sft or ppo")
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"num_nodes must be >= 1 and gpus_per_node >= 0, got {num_nodes}, {gpus_per_node}")
    if kind == "ppo" and model_dir is None:
        raise ValueError("ppo needs the SFT model directory")
    if num_nodes > 1:
        from pipelines.trainjob import run_distributed_step

        return run_distributed_step(
            kind=kind,
            section=section,
            data_dir=data_dir,
            model_dir=model_dir,
            out_dir=out_dir,
            num_nodes=num_nodes,
            gpus_per_node=gpus_per_node,
            launcher=launcher,
        )
    if gpus_per_node > 1:
        return _torchrun_single_node(kind, section, data_dir, model_dir, out_dir, gpus_per_node)
    if kind == "sft":
        from mem1_core.rl import sft

        return Path(sft.run(parse_section(SFTConfig, section, "sft"), data_dir, out_dir, log=log))
    from mem1_core.rl import ppo

    assert model_dir is not None
    return Path(ppo.run(parse_section(PPOConfig, section, "ppo"), data_dir, model_dir, out_dir, log=log))


def train_step(
    kind: str,
    section: str,
    tracking_uri: str,
    parent_run_id: str,
    step: str,
    data_dir: Path,
    model_dir: Path | None,
    out_model: str | Path,
    num_nodes: int,
    gpus_per_node: int,
    launcher: str,
) -> tuple[str, dict[str, float]]:
    """The body of the sft_warmup and ppo_train components: `train` inside a nested MLflow run.

    The trained model is copied into the component's output path `out_model` (its work dir is next
    to it). Returns the MLflow run id and the last value of every metric, for the KFP Metrics output.
    """
    # heavy (torch, matplotlib): loaded only inside a training pod, not where the pipeline is compiled
    from mem1_core.eval.plots import learning_curve
    from mem1_core.rl.ppo import HISTORY_FILE

    work = Path(out_model).parent / f"{kind}-work"
    with nested_run(tracking_uri, parent_run_id, step, json.loads(section)) as run:
        last: dict[str, float] = {}

        def log(values: dict[str, float], step_index: int) -> None:
            last.update(values)
            run.log(values, step_index)

        out = train(kind, section, data_dir, work, model_dir, log, num_nodes, gpus_per_node, launcher)
        history = out / HISTORY_FILE
        if history.is_file():  # PPO: its learning curve beside the step's metrics
            rows = json.loads(history.read_text(encoding="utf-8"))
            run.log_artifact(learning_curve(rows, work / "learning_curve.png"))
        copy_dir(out, out_model)
        return run.run_id, last


DEEPSPEED_CONFIG = "configs/deepspeed_zero3.json"  # relative to the images' WORKDIR (/app)


def step_command(
    kind: str, config_path: Path, data_dir: Path, model_dir: Path | None, out_dir: Path
) -> list[str]:
    """`mem1 sft|ppo` as a torchrun module; the trained model lands in OUT/model (the CLI's layout).

    Multi-GPU workers use the step's own `deepspeed_config` when it names one, else ZeRO-3, for SFT
    and PPO alike.
    """
    import yaml

    args = ["-m", "mem1_core.cli", kind, "--config", str(config_path), "--data-dir", str(data_dir)]
    if model_dir is not None:
        args += ["--model", str(model_dir)]
    args += ["--out", str(out_dir)]
    section = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get(kind) or {}
    if not section.get("deepspeed_config"):
        args += ["--set", f"{kind}.deepspeed_config={DEEPSPEED_CONFIG}"]
    return args


def write_step_config(kind: str, section: str, path: Path) -> Path:
    """A pipeline config YAML holding only this step's section, for `mem1 <step> --config`."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({kind: json.loads(section)}, sort_keys=True), encoding="utf-8")
    return path


def _torchrun_single_node(
    kind: str, section: str, data_dir: Path, model_dir: Path | None, out_dir: Path, gpus: int
) -> Path:
    config_path = write_step_config(kind, section, out_dir.parent / f"{kind}-config.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    cmd += step_command(kind, config_path, data_dir, model_dir, out_dir)
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out_dir / "model"
