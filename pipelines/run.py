"""Compile the pipeline to YAML, submit it to a KFP host, or run it end to end locally with kfp.local."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.images import Images
from mem1_core.config import PipelineConfig, load_config
from mem1_core.tracking import resolve_tracking_uri
from pipelines.mem1_pipeline import PIPELINE_NAME, ClusterOptions, build_pipeline


def compile_pipeline(
    output: str | Path,
    config: PipelineConfig | None = None,
    images: Images | None = None,
    cluster: ClusterOptions | None = None,
) -> Path:
    """Write the compiled pipeline spec (YAML) with `config` as the default config_json parameter."""
    from kfp import compiler

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(images, cluster, config)
    compiler.Compiler().compile(pipeline, str(out))
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
    """Create a run of a compiled package on a KFP host; returns the run id."""
    import kfp

    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise ValueError("no KFP host: pass --host or set KFP_HOST (e.g. http://ml-pipeline-ui.kubeflow:80)")
    token = token or os.environ.get("KFP_TOKEN") or None
    namespace = namespace or os.environ.get("KFP_NAMESPACE") or None
    client = kfp.Client(host=host, existing_token=token, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments or {},
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


def run_local(
    config: PipelineConfig, run_dir: str | Path | None = None, caching: bool = False
) -> LocalResult:
    """The whole pipeline on this machine: kfp.local's SubprocessRunner in this Python, MLflow on SQLite."""
    from kfp import local

    run_dir = Path(run_dir or config.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(run_dir, config.tracking.tracking_uri)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "kfp"),
        enable_caching=caching,
        cache_root=str(run_dir / "kfp" / ".cache"),
    )
    # The local images are this Python; the names only label the tasks.
    # kfp.local ignores resources; retries would only replay a deterministic local failure
    local_cluster = ClusterOptions(request_accelerators=False, retries=0)
    pipeline = build_pipeline(Images(base="python-local", trainer="python-local"), local_cluster, config)
    task = pipeline(
        config_json=json.dumps(config.model_dump(mode="json")),
        overrides={},
        base_model="",
        sources_json="",
        train_objectives=[],
        eval_objectives=[],
        em_floor=-1.0,
        domain="",
        mlflow_uri=uri,
        experiment=config.tracking.experiment,
        num_nodes=1,
        gpus_per_node=1,
        accelerator_type="nvidia.com/gpu",
        training_launcher="trainjob",
    )
    outputs = dict(task.outputs) if task.outputs else {}
    eval_dir = _latest(run_dir / "kfp", "results")
    table = (
        (eval_dir / "table.md").read_text(encoding="utf-8")
        if eval_dir and (eval_dir / "table.md").exists()
        else ""
    )
    return LocalResult(run_dir, uri, outputs, eval_dir, table, _registered(uri, config.registry.model_name))


def _latest(root: Path, name: str) -> Path | None:
    found = [p for p in root.rglob(name) if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _registered(tracking_uri: str, model_name: str) -> str:
    """The newest registered version of the model and its aliases, as 'models:/name/3 (candidate)'."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    if not versions:
        return ""
    newest = max(int(mv.version) for mv in versions)
    v = client.get_model_version(model_name, str(newest))  # search results carry no aliases
    aliases = ", ".join(v.aliases or []) or "no alias"
    return f"models:/{model_name}/{v.version} ({aliases})"


def load(config_path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    return load_config(config_path, overrides)
