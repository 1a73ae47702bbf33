"""The run's config as the steps get it (pipeline parameters merged in); metrics as MLflow and KFP take them.

Component functions are serialised by KFP and run alone in the image, so they stay a few lines long
and import the modules beside this one (installed with the project) inside their body: step_config,
mlflow_runs, reports, launch. Nothing here imports KFP: plain paths and strings, testable without
a pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from mem1_core.config import (
    ConfigError,
    PipelineConfig,
    format_validation_error,
    rename_old_keys,
    renamed_dotted_key,
)

# The step sections of PipelineConfig; each step's component receives its own as JSON (section_json).
SECTIONS = ("compose", "sft", "ppo", "eval", "register")


def merge_config(
    config_json: str,
    overrides: dict[str, Any] | None = None,
    base_model: str = "",
    sources_json: str = "",
    train_objectives: list[int] | None = None,
    eval_objectives: list[int] | None = None,
    gate_floor: float = -1.0,
    domain: str = "",
    tracking_uri: str = "",
) -> PipelineConfig:
    """The whole run's config: the config JSON, then dotted `overrides`, then the named parameters.

    Empty strings, empty lists and a negative floor mean "keep the config's value", so a pipeline run
    with only defaults reproduces the compiled-in config exactly.
    """
    try:
        data: dict[str, Any] = json.loads(config_json) if config_json.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"pipeline parameter config_json: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("pipeline parameter config_json: must be a JSON object of step sections")
    try:
        data = rename_old_keys(data)  # old key names still load (with a warning), overrides then win
    except ValueError as e:
        raise ConfigError(f"pipeline parameter config_json: {e}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, renamed_dotted_key(dotted), value)
    if overrides and "domain" in overrides and "compose.domain" not in overrides:
        domain = domain or str(overrides["domain"])  # one domain: the compose section follows it
    if base_model:
        _set_dotted(data, "sft.model.base_model", base_model)
    if sources_json.strip():
        try:
            _set_dotted(data, "compose.sources", json.loads(sources_json))
        except json.JSONDecodeError as e:
            raise ConfigError(f"pipeline parameter sources_json: not valid JSON: {e}") from None
    if train_objectives:
        _set_dotted(data, "compose.train_objectives", list(train_objectives))
    if eval_objectives:
        _set_dotted(data, "compose.eval_objectives", list(eval_objectives))
        _set_dotted(data, "eval.objectives", list(eval_objectives))
    if gate_floor >= 0:
        _set_dotted(data, "register.gate_floor", gate_floor)
    if domain:
        data["domain"] = domain
        _set_dotted(data, "compose.domain", domain)  # compose writes it into the manifest for later steps
    if tracking_uri:
        _set_dotted(data, "tracking.tracking_uri", tracking_uri)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "pipeline parameters")) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    target = data
    for key in parents:
        nxt = target.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        target = nxt
    target[leaf] = value


def section_json(cfg: PipelineConfig, name: str) -> str:
    """One step's section as the canonical JSON string the step's component receives (cache-stable)."""
    return json.dumps(getattr(cfg, name).model_dump(mode="json"), sort_keys=True)


def flatten(prefix: str, value: Any, out: dict[str, float] | None = None) -> dict[str, float]:
    """Numeric leaves of nested dicts as 'a.b.c' -> float (what MLflow and KFP Metrics accept)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool | int | float):
        out[prefix] = float(value)
    return out


def eval_metrics(data: dict[str, Any]) -> dict[str, float]:
    """metrics.json of the eval step as flat keys: grid rows become '<metric>.n<objectives>.<mode>'."""
    out: dict[str, float] = {}
    for row in data.get("grid") or []:
        if isinstance(row, dict) and "objectives" in row and "mode" in row:
            tag = f"n{row['objectives']}.{row['mode']}"
            for k, v in row.items():
                if k not in ("objectives", "mode") and isinstance(v, int | float) and not isinstance(v, bool):
                    out[mlflow_metric_key(f"{k}.{tag}")] = float(v)
    rest = {k: v for k, v in data.items() if k not in ("grid", "config")}
    out.update({mlflow_metric_key(k): v for k, v in flatten("", rest).items()})
    return out


def mlflow_metric_key(key: str) -> str:
    """MLflow keys allow [A-Za-z0-9_-./ ] only; replace anything else (e.g. ':' in 'truncate:1')."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
