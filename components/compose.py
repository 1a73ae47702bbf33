"""compose_dataset: N-objective tasks and the retrieval corpus; cached (the config fully determines it)."""

from kfp import dsl


def compose_dataset(
    compose_json: str,
    dataset: dsl.Output[dsl.Dataset],
    stats: dsl.Output[dsl.Metrics],
):
    import json
    from pathlib import Path

    from components import step_config
    from mem1_core.config import ComposeConfig, parse_section
    from mem1_core.data import compose

    cfg = parse_section(ComposeConfig, compose_json, "compose")
    compose.run(cfg, Path(dataset.path))
    manifest = json.loads((Path(dataset.path) / "manifest.json").read_text(encoding="utf-8"))
    dataset.metadata["dataset_hash"] = manifest.get("dataset_hash", "")
    for key, value in step_config.flatten("", manifest.get("counts", {})).items():
        stats.log_metric(key, value)
