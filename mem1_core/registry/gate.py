"""The promotion gate: which eval metric it compares, its value in the eval grid, and the decision.

`champion` moves only when the gate metric at the configured objectives/mode (EM for QA and the mean
reward for shop unless `gate_metric` says otherwise) beats both the current champion's and the floor.
A registered version carries the gate's key and value as tags, so the next registration compares
against the champion it finds.
"""

from __future__ import annotations

from typing import Any

from mem1_core.config import RegisterConfig
from mem1_core.registry.inputs import METRICS_FILE, RegistryError

TAG_GATE_SCORE = "mem1.gate_score"  # the gate metric's value (which metric: mem1.gate_key)
OLD_TAG_GATE_SCORE = "mem1.gate_em"  # the same, on versions registered before it was renamed; read only
TAG_GATE_KEY = "mem1.gate_key"
TAG_GATE_PASSED = "mem1.gate_passed"
TAG_GATE_REASON = "mem1.gate_reason"


def gate_metric_for(cfg: RegisterConfig, domain: str) -> str:
    """The eval metric the gate compares; `auto` picks EM for QA and the mean reward for shop."""
    if cfg.gate_metric != "auto":
        return cfg.gate_metric
    return "reward" if domain == "shop" else "em"


def gate_score(
    eval_data: dict[str, Any], objectives: int, mode: str, source: str = METRICS_FILE, metric: str = "em"
) -> float:
    """`metric` (default EM, mean over objectives and tasks, 0..1) of the grid row (objectives, mode)."""
    cells = []
    for i, row in enumerate(eval_data["grid"]):
        if not isinstance(row, dict):
            raise RegistryError(f"{source}: grid[{i}] is not an object")
        cells.append((row.get("objectives"), row.get("mode")))
        if row.get("objectives") == objectives and row.get("mode") == mode:
            if not isinstance(row.get(metric), int | float):
                raise RegistryError(f"{source}: grid[{i}].{metric} is missing or not a number")
            return float(row[metric])
    raise RegistryError(
        f"{source}: no grid row for objectives={objectives} mode={mode!r} (the gate needs it); rows: {cells}"
    )


def promotion_gate(
    candidate: float, champion: float | None, floor: float, metric: str = "em"
) -> tuple[bool, str]:
    """Promote only a strict improvement over both the floor and the current champion."""
    name = "EM" if metric == "em" else metric
    if candidate <= floor:
        return False, f"{name} {candidate:.4f} does not beat the floor {floor:.4f}"
    if champion is not None and candidate <= champion:
        return False, f"{name} {candidate:.4f} does not beat the champion's {champion:.4f}"
    if champion is None:
        return True, f"{name} {candidate:.4f} beats the floor {floor:.4f}; no champion yet"
    return True, f"{name} {candidate:.4f} beats the champion's {champion:.4f} and the floor {floor:.4f}"


def score_tag(tags: dict[str, str]) -> str | None:
    """A registered version's gate score tag (the old name on versions registered before the rename)."""
    return tags.get(TAG_GATE_SCORE, tags.get(OLD_TAG_GATE_SCORE))


def version_score(version: Any | None, gate_key: str) -> float | None:
    """A registered version's gate score, when it was gated on the same key (metric, objectives, mode)."""
    if version is None or version.tags.get(TAG_GATE_KEY) != gate_key:
        return None
    score = score_tag(version.tags)
    return None if score is None else float(score)
