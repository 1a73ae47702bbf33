"""Per-trajectory metrics — accuracy and efficiency — and their summary over a set of episodes.

Accuracy: SQuAD/HotpotQA exact match and F1 per objective, as the mean over objectives (`em`, `f1`,
0..1, what the reward uses) and as the sum (`em_sum`, `f1_sum`, 0..N, the paper's scale).
Efficiency, from the exact token ids of each turn (MEM1.md):
- `peak_tokens`: the largest context at any turn, counting that turn's own output;
- `dependency_length`: how many tokens each generated token attends to, on average:
  Σ over generated segments of (visible context + ℓ/2)·ℓ, divided by the generated tokens Σℓ;
- `seconds`: wall time attributed to the episode by the rollout loop.
"""

from __future__ import annotations

from collections.abc import Iterable

from mem1_core.agent.types import Trajectory
from mem1_core.protocol.scoring import exact_match, f1

PER_TRAJECTORY = (
    "em",
    "em_sum",
    "f1",
    "f1_sum",
    "reward",
    "peak_tokens",
    "dependency_length",
    "dependency_total",
    "generated_tokens",
    "turns",
    "seconds",
    "format_error",
)


def objective_scores(predictions: list[str], gold: list[list[str]]) -> tuple[list[float], list[float]]:
    """(EM, F1) per objective; a missing or empty prediction scores 0, extra predictions are ignored."""
    preds = [*predictions[: len(gold)], *([""] * (len(gold) - len(predictions)))]
    em = [exact_match(p, g) if p else 0.0 for p, g in zip(preds, gold, strict=True)]
    f = [f1(p, g) if p else 0.0 for p, g in zip(preds, gold, strict=True)]
    return em, f


def dependency(traj: Trajectory) -> tuple[float, int]:
    """(Σ (visible context + ℓ/2)·ℓ over the turns' generated segments, generated tokens Σℓ)."""
    total, generated = 0.0, 0
    for turn in traj.turns:
        length = len(turn.output_ids)
        total += (turn.context_len + length / 2) * length
        generated += length
    return total, generated


def trajectory_metrics(traj: Trajectory) -> dict[str, float]:
    """All metrics of one episode; see the module docstring for definitions."""
    n = max(len(traj.gold), 1)
    em, f = objective_scores(traj.predictions, traj.gold)
    dep_total, generated = dependency(traj)
    return {
        "em": sum(em) / n,
        "em_sum": sum(em),
        "f1": sum(f) / n,
        "f1_sum": sum(f),
        "reward": float(traj.reward),
        "peak_tokens": float(traj.peak_tokens),
        "dependency_length": dep_total / generated if generated else 0.0,
        "dependency_total": dep_total,
        "generated_tokens": float(generated),
        "turns": float(len(traj.turns)),
        "seconds": float(traj.seconds),
        "format_error": 0.0 if traj.format_error is None else 1.0,
    }


def annotate(trajectories: Iterable[Trajectory]) -> list[Trajectory]:
    """Fill each trajectory's `metrics` dict in place (kept when trajectories are written as jsonl)."""
    out = []
    for traj in trajectories:
        traj.metrics.update(trajectory_metrics(traj))
        out.append(traj)
    return out


def summarize(trajectories: Iterable[Trajectory]) -> dict[str, float]:
    """Means over episodes of every per-trajectory metric, plus the count, the largest peak and the
    total seconds. `format_error` becomes the share of episodes that ended on a malformed turn."""
    rows = [trajectory_metrics(t) for t in trajectories]
    if not rows:
        raise ValueError("summarize() needs at least one trajectory")
    summary = {key: sum(r[key] for r in rows) / len(rows) for key in PER_TRAJECTORY}
    summary["n_trajectories"] = float(len(rows))
    summary["peak_tokens_max"] = max(r["peak_tokens"] for r in rows)
    summary["seconds_total"] = sum(r["seconds"] for r in rows)
    return summary


def is_shop_grid(rows: Iterable[dict[str, object]]) -> bool:
    """Evaluation rows of the shop domain: they carry `success_rate` (summary_extras adds it)."""
    rows = list(rows)
    return bool(rows) and all("success_rate" in r for r in rows)
