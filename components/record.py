"""record_step: log a cached step's outputs as a nested MLflow run of this pipeline run.

Cached steps (compose, eval) cannot take the parent run id as an input (it changes every run and
would defeat the cache), so this small uncached step logs their metrics and files instead; on a cache
hit the reused outputs still show up under the new parent run.
"""

from kfp import dsl


def record_step(
    tracking_uri: str,
    parent_run_id: str,
    step: str,
    section_json: str,
    metrics: dsl.Input[dsl.Metrics],
    files: dsl.Input[dsl.Artifact],
):
    import json
    from pathlib import Path

    from components import mlflow_runs, step_config

    with mlflow_runs.nested_run(tracking_uri, parent_run_id, step, json.loads(section_json)) as run:
        numeric = {k: float(v) for k, v in metrics.metadata.items() if isinstance(v, int | float)}
        run.log({step_config.mlflow_metric_key(k): v for k, v in numeric.items()}, 0)
        tags = {"mem1.artifact_uri": files.uri}
        tags.update(
            {f"mem1.{k}": str(v) for k, v in files.metadata.items() if isinstance(v, str | int | float)}
        )
        run.set_tags(tags)
        src = Path(files.path)
        if src.is_dir():
            run.log_artifacts(
                [p for p in sorted(src.iterdir()) if p.is_file() and p.stat().st_size < 20_000_000], step
            )
