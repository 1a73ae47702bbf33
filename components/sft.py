"""sft_warmup: teach the tag format on teacher trajectories (one device, torchrun, or a training job)."""

from kfp import dsl


def sft_warmup(
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
    import json
    from pathlib import Path

    from components import runtime

    work = Path(model.path).parent / "sft-work"
    with runtime.nested_run(tracking_uri, parent_run_id, "sft_warmup", json.loads(sft_json)) as run:
        last: dict = {}

        def log(values: dict, step: int) -> None:
            last.update(values)
            run.log(values, step)

        out = runtime.train(
            "sft", sft_json, Path(dataset.path), work, None, log, num_nodes, gpus_per_node, launcher
        )
        runtime.copy_dir(out, model.path)
        for key, value in last.items():
            metrics.log_metric(key, float(value))
        model.metadata["mlflow_run_id"] = run.run_id
