"""Advantage estimators: GAE with a critic, or group-relative (GRPO, RLOO) with none.

GAE spreads the outcome reward over an episode's generated tokens through a learned value function;
at this project's scale the critic starts at zero and learns slowly, so most of its signal is noise.
The group-relative estimators roll out `group_size` episodes of the same task and score each one
against its siblings: the baseline is the group's own mean reward, which needs no network and is
exact for that task. Every generated token of an episode gets that episode's advantage.

- grpo: A_i = r_i - mean(r), divided by std(r) when `scale_by_std` (DeepSeekMath's GRPO).
- rloo: A_i = r_i - mean of the other k-1 rewards = k/(k-1) (r_i - mean(r)) (Ahmadian et al. 2024),
  an unbiased leave-one-out baseline.
A group whose rewards are all equal carries no signal: its advantages are exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Estimator = Literal["gae", "grpo", "rloo"]
GROUP_ESTIMATORS: tuple[str, ...] = ("grpo", "rloo")
STD_EPS = 1e-6


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the masked (generated) tokens of one episode, in order; zeros elsewhere."""
    idx = torch.nonzero(mask > 0).squeeze(-1).tolist()
    adv = torch.zeros_like(values)
    last = 0.0
    next_v = 0.0
    for i in reversed(idx):
        delta = float(rewards[i]) + gamma * next_v - float(values[i])
        last = delta + gamma * lam * last
        adv[i] = last
        next_v = float(values[i])
    returns = (adv + values) * mask
    return adv, returns


def _groups(n: int, group_size: int) -> list[range]:
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} episodes do not split into groups of {group_size}")
    return [range(g, g + group_size) for g in range(0, n, group_size)]


def group_advantages(
    rewards: Sequence[float], group_size: int, estimator: Estimator, scale_by_std: bool = True
) -> list[float]:
    """One advantage per episode; episodes of a group are consecutive (task 0 x k, task 1 x k, ...)."""
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"group_advantages needs grpo or rloo, got {estimator!r}")
    if group_size < 2:
        raise ValueError(
            f"{estimator} needs group_size >= 2 (a baseline from the other samples), got {group_size}"
        )
    out = [0.0] * len(rewards)
    for group in _groups(len(rewards), group_size):
        r = [float(rewards[i]) for i in group]
        mean = sum(r) / len(r)
        for i, ri in zip(group, r, strict=True):
            if estimator == "rloo":
                out[i] = (ri - mean) * len(r) / (len(r) - 1)
            else:
                out[i] = ri - mean
        if estimator == "grpo" and scale_by_std:
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
            for i in group:
                out[i] = out[i] / (std + STD_EPS) if std > 0 else 0.0
    return out


def _flat(rewards: Sequence[float], group: range) -> bool:
    """All of the group's rewards are equal: its advantages are 0, it carries no signal."""
    return max(rewards[i] for i in group) - min(rewards[i] for i in group) < 1e-12


def group_stats(rewards: Sequence[float], group_size: int) -> dict[str, float]:
    """Mean within-group reward std, and the share of groups whose rewards are all equal (no signal)."""
    groups = _groups(len(rewards), group_size)
    stds, flat = [], 0
    for group in groups:
        r = [float(rewards[i]) for i in group]
        mean = sum(r) / len(r)
        stds.append(math.sqrt(sum((x - mean) ** 2 for x in r) / max(len(r) - 1, 1)))
        flat += _flat(rewards, group)
    n = max(len(groups), 1)
    return {"group_reward_std": sum(stds) / n, "flat_group_share": flat / n}


def informative_groups(rewards: Sequence[float], group_size: int, keep: int) -> list[int]:
    """Indices of `keep` groups, those whose rewards differ first, each kind in sampling order.

    DAPO's dynamic sampling without a refill loop: the step rolls out more groups than it trains on
    and drops flat ones (all rewards equal: advantage 0, so they only dilute the update). Flat groups
    fill the quota when too few differ, so every step trains on the same number of episodes (ranks
    keep equal mini-batch counts)."""
    groups = _groups(len(rewards), group_size)
    if not 0 < keep <= len(groups):
        raise ValueError(f"cannot keep {keep} of {len(groups)} groups")
    flat = [_flat(rewards, g) for g in groups]
    ranked = [k for k in range(len(groups)) if not flat[k]] + [k for k in range(len(groups)) if flat[k]]
    return sorted(ranked[:keep])
