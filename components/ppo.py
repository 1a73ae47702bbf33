"""ppo_train: PPO with the MEM1 attention mask from the SFT model (one device, torchrun, or a job)."""

from kfp import dsl


def ppo_train(
    ppo_json: str,
    tracking_uri: str,
    parent_run_id: str,
    num_nodes: int,
    gpus_per_node: int,
    launcher: str,
    dataset: dsl.Input[dsl.Dataset],
    sft_model: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    import json
    from pathlib import Path

    from components import runtime

    work = Path(model.path).parent / "ppo-work"
    with runtime.nested_run(tracking_uri, parent_run_id, "ppo_train", json.loads(ppo_json)) as run:
        last: dict = {}

        def log(values: dict, step: int) -> None:
            last.update(values)
            run.log(values, step)

        out = runtime.train(
            "ppo",
            ppo_json,
            Path(dataset.path),
            work,
            Path(sft_model.path),
            log,
            num_nodes,
            gpus_per_node,
            launcher,
        )
        runtime.copy_dir(out, model.path)
        for key, value in last.items():
            metrics.log_metric(key, float(value))
        model.metadata["mlflow_run_id"] = run.run_id
