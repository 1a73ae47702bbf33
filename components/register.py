"""register: register the PPO model in MLflow behind the promotion gate; never cached, never retried."""

from kfp import dsl


def register(
    register_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    eval_results: dsl.Input[dsl.Artifact],
    report: dsl.Output[dsl.Markdown],
) -> str:
    import json
    from pathlib import Path

    from components import mlflow_runs, reports
    from mem1_core.config import RegisterConfig, parse_section
    from mem1_core.registry import registration

    cfg = parse_section(RegisterConfig, register_json, "register")
    with mlflow_runs.nested_run(tracking_uri, parent_run_id, "register", json.loads(register_json)) as run:
        result = registration.run(cfg, Path(model.path), Path(eval_results.path), Path(dataset.path), run)
    Path(report.path).write_text(reports.registration_markdown(result.to_dict()), encoding="utf-8")
    return json.dumps(result.to_dict(), sort_keys=True, default=str)
