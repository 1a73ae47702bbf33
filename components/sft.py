"""sft: the warm-up that teaches the tag format on teacher trajectories (one device, torchrun, or a job)."""

from kfp import dsl


def sft(
    sft_json: str,
    tracking_uri: str,
    parent_run_id: str,
    num_nodes: int,
    gpus_per_node: int,
    launcher: str,
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    from pathlib import Path

    from components import launch

    run_id, last = launch.train_step(
        "sft", sft_json, tracking_uri, parent_run_id,
        Path(dataset.path), None, model.path, num_nodes, gpus_per_node, launcher,
    )  # fmt: skip
    for key, value in last.items():
        metrics.log_metric(key, float(value))
    model.metadata["mlflow_run_id"] = run_id
