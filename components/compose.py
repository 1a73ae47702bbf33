"""compose: N-objective tasks, the retrieval corpus and (dense / hybrid) its index; cached (the
config fully determines it, so the index is built once per data set)."""

from kfp import dsl


def compose(
    compose_json: str,
    dataset: dsl.Output[dsl.Dataset],
    stats: dsl.Output[dsl.Metrics],
):
    import json
    from pathlib import Path

    from components import step_config
    from mem1_core.config import ComposeConfig, parse_section
    from mem1_core.data import compose
    from mem1_core.retrieval.backends import build_data_dir_index

    cfg = parse_section(ComposeConfig, compose_json, "compose")
    compose.run(cfg, Path(dataset.path))
    # dense / hybrid: the index is part of the cached dataset artifact, built once per data set
    index = build_data_dir_index(Path(dataset.path), cfg.retrieval) or {}
    dataset.metadata.update(index)
    manifest = json.loads((Path(dataset.path) / "manifest.json").read_text(encoding="utf-8"))
    dataset.metadata["dataset_hash"] = manifest.get("dataset_hash", "")
    for key, value in step_config.flatten("", manifest.get("counts", {})).items():
        stats.log_metric(key, value)
