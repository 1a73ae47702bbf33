"""prepare_run: validate the whole run's config once, open the MLflow parent run, hand each step its section.

Runs first and is never cached (it creates a new parent run). Splitting the config here means each
later step receives exactly its own section as a canonical JSON string, so cacheable steps (compose,
eval) hit the cache whenever their own inputs are unchanged.
"""

from typing import NamedTuple

from kfp import dsl


def prepare_run(
    config_json: str,
    overrides: dict,
    base_model: str,
    sources_json: str,
    train_objectives: list,
    eval_objectives: list,
    gate_floor: float,
    domain: str,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    pipeline_job_id: str,
    num_nodes: int,
    gpus_per_node: int,
    config: dsl.Output[dsl.Artifact],
) -> NamedTuple(
    "Sections",
    parent_run_id=str,
    compose=str,
    sft=str,
    ppo=str,
    eval=str,
    register=str,
    tracking_uri=str,
):
    import json
    from collections import namedtuple
    from pathlib import Path

    from components import mlflow_runs, step_config

    cfg = step_config.merge_config(
        config_json,
        overrides,
        base_model,
        sources_json,
        train_objectives,
        eval_objectives,
        gate_floor,
        domain,
        tracking_uri,
    )
    uri = mlflow_runs.resolve_tracking_uri(cfg.tracking.tracking_uri or "")
    params = cfg.model_dump(mode="json")
    params["cluster"] = {"num_nodes": num_nodes, "gpus_per_node": gpus_per_node}
    mlflow_runs.close_orphans(uri, experiment or cfg.tracking.experiment)
    parent = mlflow_runs.start_parent_run(
        uri, experiment or cfg.tracking.experiment, run_name, params, pipeline_job_id
    )
    Path(config.path).write_text(json.dumps(cfg.model_dump(mode="json"), indent=2), encoding="utf-8")
    config.metadata["parent_run_id"] = parent
    out = namedtuple("Sections", "parent_run_id compose sft ppo eval register tracking_uri")
    sections = [step_config.section_json(cfg, name) for name in ("compose", "sft", "ppo", "eval", "register")]
    return out(parent, *sections, uri)
