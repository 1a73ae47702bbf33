"""Advantage estimators and loss aggregation, against sums written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mem1_core.rl.advantages import gae, group_advantages, group_stats, informative_groups
from mem1_core.rl.ppo import aggregate


def test_gae_matches_direct_sums() -> None:
    rng = torch.Generator().manual_seed(0)
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.float32)
    rewards = torch.randn(9, generator=rng) * mask
    values = torch.randn(9, generator=rng) * mask
    idx = [1, 2, 5, 6, 7]
    # gamma = lam = 1: advantage = sum of future rewards - V.
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    for k, i in enumerate(idx):
        expect = sum(float(rewards[j]) for j in idx[k:]) - float(values[i])
        assert abs(float(adv[i]) - expect) < 1e-5
        assert abs(float(ret[i]) - (expect + float(values[i]))) < 1e-5
    assert float(adv[mask == 0].abs().sum()) == 0.0
    # General gamma, lam: sum over l of (gamma lam)^l delta_{t+l}, next value 0 after the last token.
    g, lam = 0.9, 0.8
    adv, _ = gae(rewards, values, mask, g, lam)
    v = [float(values[i]) for i in idx] + [0.0]
    deltas = [float(rewards[i]) + g * v[k + 1] - v[k] for k, i in enumerate(idx)]
    for k, i in enumerate(idx):
        expect = sum((g * lam) ** m * deltas[k + m] for m in range(len(idx) - k))
        assert abs(float(adv[i]) - expect) < 1e-5


def test_grpo_is_reward_minus_group_mean_over_group_std() -> None:
    rewards = [1.0, 0.0, 0.0, 0.5, 0.5, 0.5]  # two groups of 3
    adv = group_advantages(rewards, 3, "grpo", scale_by_std=True)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert adv[:3] == pytest.approx([(1 - mean) / std, -mean / std, -mean / std], rel=1e-5)
    assert adv[3:] == [0.0, 0.0, 0.0]  # equal rewards: no signal, not a division by zero
    assert group_advantages(rewards, 3, "grpo", scale_by_std=False)[:3] == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3]
    )


def test_rloo_baseline_leaves_the_episode_out() -> None:
    rewards = [1.0, 0.0, 0.5, 0.25]
    adv = group_advantages(rewards, 4, "rloo")
    for i, r in enumerate(rewards):
        others = [x for j, x in enumerate(rewards) if j != i]
        assert adv[i] == pytest.approx(r - sum(others) / len(others))
    assert sum(adv) == pytest.approx(0.0)


def test_group_advantages_refuse_what_they_cannot_score() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages([1.0] * 6, 4, "grpo")
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages([1.0], 1, "rloo")
    with pytest.raises(ValueError, match="grpo or rloo"):
        group_advantages([1.0, 0.0], 2, "gae")


def test_group_stats_count_flat_groups() -> None:
    stats = group_stats([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 2)
    assert stats["flat_group_share"] == pytest.approx(0.75)
    assert stats["group_reward_std"] == pytest.approx(math.sqrt(0.5) / 4)


def test_sequence_mean_weighs_episodes_equally_token_mean_tokens() -> None:
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    episodes = torch.tensor([[0, 0, 0, -1], [1, -1, -1, -1]])
    assert float(aggregate(x, mask, episodes, "token_mean")) == pytest.approx(6 / 4)
    assert float(aggregate(x, mask, episodes, "sequence_mean")) == pytest.approx((1 + 3) / 2)
    packed = torch.tensor([[0, 0, 1, 1]])  # two episodes in one row
    y, m = torch.tensor([[2.0, 4.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert float(aggregate(y, m, packed, "sequence_mean")) == pytest.approx((3 + 1) / 2)


def test_informative_groups_keep_groups_whose_rewards_differ_first() -> None:
    # groups of 2: flat, differs, flat, differs, differs
    rewards = [1, 1, 0, 1, 0, 0, 1, 0, 0.5, 0]
    assert informative_groups(rewards, 2, 2) == [1, 3]  # the first two that differ, in order
    assert informative_groups(rewards, 2, 3) == [1, 3, 4]
    assert informative_groups(rewards, 2, 4) == [0, 1, 3, 4]  # too few differ: flat ones fill, in order
    assert informative_groups(rewards, 2, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot keep 6 of 5"):
        informative_groups(rewards, 2, 6)
