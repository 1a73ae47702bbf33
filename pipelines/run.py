"""Compile the pipeline to YAML, submit it to a KFP host, or run it end to end locally with kfp.local."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import kfp
from kfp import compiler, local

from components.images import Images
from mem1_core.config import PipelineConfig, load_config, warn_renamed
from mem1_core.data.compose import load_tasks
from mem1_core.orphan_runs import close_orphans, summary_line
from mem1_core.tracking import OWNER_ENV, Tracker, default_tracking_uri, process_owner, resolve_tracking_uri
from pipelines.local_output import StepLog, Summary, display_dir
from pipelines.mem1_pipeline import PIPELINE_NAME, RENAMED_PARAMETERS, ClusterOptions, build_pipeline


def compile_pipeline(
    output: str | Path,
    config: PipelineConfig | None = None,
    images: Images | None = None,
    cluster: ClusterOptions | None = None,
) -> Path:
    """Write the compiled pipeline spec (YAML) with `config` as the default config_json parameter."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(images, cluster, config)
    compiler.Compiler().compile(pipeline, str(out))
    return out


def renamed_parameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """Run arguments with old parameter names (RENAMED_PARAMETERS) under their new ones, each with a
    DeprecatedNameWarning naming the new name; old and new given with different values is a ValueError."""
    out = dict(arguments)
    for old, new in RENAMED_PARAMETERS.items():
        if old in out:
            warn_renamed(old, new, "pipeline parameter")
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ValueError(f"pipeline parameters {old} and {new} disagree; pass only {new}")
            out[new] = value
    return out


def submit(
    package: str | Path,
    host: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    experiment: str = "mem1",
    run_name: str | None = None,
    arguments: dict[str, Any] | None = None,
) -> str:
    """Create a run of a compiled package on a KFP host; returns the run id. Old parameter names in
    `arguments` are sent under their new names (renamed_parameters)."""
    arguments = renamed_parameters(arguments or {})
    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise ValueError("no KFP host: pass --host or set KFP_HOST (e.g. http://ml-pipeline-ui.kubeflow:80)")
    token = token or os.environ.get("KFP_TOKEN") or None
    namespace = namespace or os.environ.get("KFP_NAMESPACE") or None
    client = kfp.Client(host=host, existing_token=token, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments,
        run_name=run_name or f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment,
        namespace=namespace,
    )
    return str(result.run_id)


@dataclass
class LocalResult:
    run_dir: Path
    tracking_uri: str
    outputs: dict[str, Any]
    eval_dir: Path | None
    table: str
    registered: str
    summary: Summary


def run_local(
    config: PipelineConfig,
    run_dir: str | Path | None = None,
    caching: bool = False,
    console: TextIO | None = None,
) -> LocalResult:
    """The whole pipeline on this machine: kfp.local's SubprocessRunner in this Python, MLflow on SQLite.

    `console` (default stdout) gets one line per step; everything kfp.local and the steps print goes
    to <run_dir>/logs/pipeline-<time>.log. A failed step raises RuntimeError naming that log.
    """
    console = console or sys.stdout
    run_dir = Path(run_dir or config.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(run_dir, config.tracking.tracking_uri)
    log_path = run_dir / "logs" / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    experiment = config.tracking.experiment
    closed = close_orphans(Tracker(uri, experiment), [experiment], "found by `mem1 pipeline local`")
    if closed:
        print(summary_line(closed), file=console, flush=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "kfp"),
        enable_caching=caching,
        cache_root=str(run_dir / "kfp" / ".cache"),
    )
    # The local images are this Python; the names only label the tasks.
    # kfp.local ignores resources; retries would only replay a deterministic local failure.
    # sft and ppo keep their checkpoints under the run dir, where a rerun after a kill finds them.
    local_cluster = ClusterOptions(
        request_accelerators=False, retries=0, checkpoint_root=str(run_dir / "checkpoints")
    )
    pipeline = build_pipeline(Images(base="python-local", trainer="python-local"), local_cluster, config)
    print(f"running the pipeline locally; full log: {log_path}", file=console, flush=True)
    with log_path.open("w", encoding="utf-8") as log, _owned_by_this_process():
        steps = StepLog(log, console, run_dir / "kfp")
        try:
            with redirect_stdout(steps), redirect_stderr(steps):
                task = pipeline(
                    config_json=json.dumps(config.model_dump(mode="json")),
                    overrides={},
                    base_model="",
                    sources_json="",
                    train_objectives=[],
                    eval_objectives=[],
                    gate_floor=-1.0,
                    domain="",
                    tracking_uri=uri,
                    experiment=config.tracking.experiment,
                    num_nodes=1,
                    gpus_per_node=1,
                    accelerator_type="nvidia.com/gpu",
                    training_launcher="trainjob",
                )
        except RuntimeError as e:
            raise RuntimeError(f"{e}; full log: {log_path}") from e
    outputs = dict(task.outputs) if task.outputs else {}
    eval_dir = _latest(run_dir / "kfp", "results")
    table = (
        (eval_dir / "table.md").read_text(encoding="utf-8")
        if eval_dir and (eval_dir / "table.md").exists()
        else ""
    )
    name = config.register.model_name
    registered, aliases = _registered(uri, name)
    grid: list[dict[str, Any]] = []
    if eval_dir is not None and (eval_dir / "metrics.json").is_file():
        grid = list(json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8")).get("grid") or [])
    summary = Summary(
        ok=True,
        seconds=time.monotonic() - started,
        log_path=log_path,
        tracking_uri=uri,
        default_uri=default_tracking_uri(),
        bin_dir=display_dir(Path(sys.executable).parent, Path.cwd()),
        grid=grid,
        eval_dir=eval_dir,
        registered=registered,
        model_ref=f"models:/{name}@{'champion' if 'champion' in aliases else 'candidate'}"
        if registered
        else "",
        questions=_sample_questions(run_dir / "kfp", config.register.gate_objectives),
    )
    return LocalResult(run_dir, uri, outputs, eval_dir, table, registered, summary)


@contextmanager
def _owned_by_this_process() -> Iterator[None]:
    """The pipeline's parent run is owned by this process (the step subprocesses inherit the variable):
    if it dies, the next start finds the run's owner gone and marks it KILLED."""
    before = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = process_owner()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = before


def _latest(root: Path, name: str) -> Path | None:
    found = [p for p in root.rglob(name) if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _sample_questions(kfp_root: Path, objectives: int) -> list[str]:
    """The questions of one held-out task with `objectives` objectives (else the first), for the
    summary's `mem1 agent` example."""
    data_dir = _latest(kfp_root, "dataset")
    if data_dir is None or not (data_dir / "eval.parquet").is_file():
        return []
    tasks = load_tasks(data_dir, "eval")
    task = next((t for t in tasks if len(t.objectives) == objectives), tasks[0] if tasks else None)
    return [o.question for o in task.objectives] if task else []


def _registered(tracking_uri: str, model_name: str) -> tuple[str, list[str]]:
    """The newest registered version of the model and its aliases: ('models:/name/3 (candidate)', [...])."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow (~2 s) only for the summary after a local run

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    if not versions:
        return "", []
    newest = max(int(mv.version) for mv in versions)
    v = client.get_model_version(model_name, str(newest))  # search results carry no aliases
    aliases = list(v.aliases or [])
    return f"models:/{model_name}/{v.version} ({', '.join(aliases) or 'no alias'})", aliases


def load(config_path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    return load_config(config_path, overrides)
