"""PNG plots of the evaluation grid: one line per memory mode against the number of objectives.

The two plots the paper's argument rests on: accuracy as tasks get longer, and peak context
(memory) as tasks get longer; MEM1's should stay flat where full context grows. Shop grids plot
the WebShop reward and success rate instead of EM (which there only counts exact-target purchases),
against instructions per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or in a pod

import matplotlib.pyplot as plt

from mem1_core.eval.metrics import is_shop_grid

MARKERS = ("o", "s", "^", "D", "v")
STYLES = ("-", "--", ":", "-.")
PLOTS: dict[str, tuple[str, str, str]] = {
    # file stem: (row key, y label, title)
    "em_vs_objectives": (
        "em_sum",
        "exact match (correct sub-answers per task)",
        "Accuracy vs number of objectives",
    ),
    "peak_tokens_vs_objectives": (
        "peak_tokens",
        "peak context tokens (mean per task)",
        "Memory vs number of objectives",
    ),
}


SHOP_PLOTS: dict[str, tuple[str, str, str]] = {
    "reward_vs_instructions": (
        "reward",
        "WebShop reward (mean per task, 0..1)",
        "Reward vs number of instructions",
    ),
    "success_vs_instructions": (
        "success_rate",
        "success rate (share of tasks with reward 1)",
        "Success vs number of instructions",
    ),
    "peak_tokens_vs_instructions": (
        "peak_tokens",
        "peak context tokens (mean per task)",
        "Memory vs number of instructions",
    ),
}


def line_plot(
    rows: Sequence[dict[str, Any]],
    key: str,
    ylabel: str,
    title: str,
    out: Path,
    xlabel: str = "number of objectives per task",
) -> Path:
    """One line per mode: x = objectives, y = rows[key]; log2 x-axis when objectives span >= 4x."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, mode in enumerate(modes):
        pts = sorted((int(r["objectives"]), float(r[key])) for r in rows if r["mode"] == mode)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        # distinct markers and dashes keep coinciding curves (e.g. equal EM) visible
        ax.plot(
            xs,
            ys,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=STYLES[i % len(STYLES)],
            linewidth=2,
            markersize=8 - i % 3,
            label=mode,
        )
    objectives = sorted({int(r["objectives"]) for r in rows})
    if objectives and objectives[-1] >= 4 * objectives[0]:
        ax.set_xscale("log", base=2)
    ax.set_xticks(objectives)
    ax.set_xticklabels([str(n) for n in objectives])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="mode")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def learning_curve(history: Sequence[dict[str, float]], out: Path) -> Path:
    """PPO's learning curve: sampled training reward (and its moving average) and greedy held-out EM
    against the step, on one 0..1 axis, from rl.ppo's per-step history."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    train = [r for r in history if "ppo/reward" in r]
    if train:
        steps = [r["step"] for r in train]
        ax.plot(
            steps,
            [r["ppo/reward"] for r in train],
            alpha=0.35,
            linewidth=1,
            label="training reward (sampled)",
        )
        if all("ppo/reward_ma" in r for r in train):
            ax.plot(
                steps, [r["ppo/reward_ma"] for r in train], linewidth=2, label="training reward, moving avg"
            )
    keys = sorted(
        {k for r in history for k in r if k.startswith("ppo/heldout_em_n")}, key=lambda k: int(k[16:])
    )
    for i, key in enumerate(keys):
        pts = [(r["step"], r[key]) for r in history if key in r]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=MARKERS[i % len(MARKERS)],
            linestyle=STYLES[(i + 1) % len(STYLES)],
            linewidth=2,
            label=f"held-out EM, {key[16:]} objectives (greedy)",
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward / exact match (0..1)")
    ax.set_title("Learning curve")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def grid_plots(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the grid's plots (SHOP_PLOTS when the rows are shop rows, else PLOTS); returns the paths."""
    if not rows:
        return []
    shop = is_shop_grid(rows)
    plots, xlabel = (
        (SHOP_PLOTS, "number of instructions per task") if shop else (PLOTS, "number of objectives per task")
    )
    return [
        line_plot(rows, key, ylabel, title, out_dir / f"{stem}.png", xlabel)
        for stem, (key, ylabel, title) in plots.items()
    ]
