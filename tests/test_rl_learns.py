"""The trainer can learn at all, apart from task difficulty: on a reward it controls, RL raises it.

A one-turn environment pays 1 when the model's one-token answer is one of a fixed quarter of the
vocabulary, 0 otherwise. An untrained model starts near 0.25. Within 20 CPU steps PPO must raise the
mean sampled reward clearly, with GAE (critic) and with GRPO (groups); with the policy-gradient sign
flipped (every advantage negated, as a sign bug would do) the same run must not learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rl_helpers import compose_small, untrained_tiny_model

from mem1_core.config import PPOConfig
from mem1_core.data.types import Task
from mem1_core.envs.base import StepResult
from mem1_core.protocol.tags import DEFAULT_GRAMMAR
from mem1_core.rl import ppo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 20


class PickOneEnv:
    """One turn: reward 1 when the generation is one of `paid` (decoded single tokens)."""

    grammar = DEFAULT_GRAMMAR
    max_turns = 1

    def __init__(self, task: Task, paid: set[str]) -> None:
        self.task, self.paid = task, paid

    def reset(self) -> str:
        return "Say one word:"

    def step(self, generation: str) -> StepResult:
        return StepResult(
            "", done=True, reward=float(generation in self.paid), info={"predictions": [generation]}
        )

    @property
    def stop_strings(self) -> list[str]:
        return []


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = compose_small(tmp_path_factory.mktemp("data"), n_train_tasks=32)
    return data, untrained_tiny_model(data, tmp_path_factory.mktemp("model") / "model")


def _rewards(advantage: str, assets: tuple[Path, Path], out: Path, flip: bool = False) -> list[float]:
    data, model = assets
    groups = {"gae": 1, "grpo": 8}[advantage]
    cfg = PPOConfig.model_validate(
        {
            "advantage": advantage, "group_size": groups, "prompts_per_step": 32 // groups,
            "minibatch_size": 16, "ppo_epochs": 2, "actor_lr": 3e-3, "critic_lr": 3e-3,
            "kl_coef": 0.0, "entropy_coef": 0.0, "steps": STEPS,
            "agent": {"max_new_tokens": 1, "max_turns": 1, "temperature": 1.0},
        }
    )  # fmt: skip
    trainer = ppo.PPOTrainer(cfg, data, model, out)
    tok = trainer.tokenizer
    paid = {tok.decode([i]) for i in range(0, len(tok), 4)}  # a quarter of the vocabulary
    trainer.env_factory = lambda task: PickOneEnv(task, paid)
    if flip:
        score = trainer.score

        def flipped(seqs: list[Any]) -> list[Any]:
            scored = score(seqs)
            for x in scored:
                x.advantages = -x.advantages
            return scored

        trainer.score = flipped  # type: ignore[method-assign]
    rewards = []
    for _ in range(STEPS):
        rewards.append(trainer.train_step()["reward"])
        trainer.step += 1
    return rewards


def _learned(rewards: list[float]) -> bool:
    """Clearly up: the last 5 steps' mean reward beats the first 3 steps' by at least 0.25."""
    first, last = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    return last >= first + 0.25


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_rl_raises_a_controllable_reward(advantage: str, assets: tuple[Path, Path], tmp_path: Path) -> None:
    rewards = _rewards(advantage, assets, tmp_path)
    assert 0.1 < sum(rewards[:3]) / 3 < 0.45, rewards  # an untrained model starts near chance
    assert _learned(rewards), f"{advantage}: reward did not rise: {[round(r, 2) for r in rewards]}"


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_a_flipped_policy_gradient_does_not_learn(
    advantage: str, assets: tuple[Path, Path], tmp_path: Path
) -> None:
    rewards = _rewards(advantage, assets, tmp_path, flip=True)
    assert not _learned(rewards), rewards
    assert sum(rewards[-5:]) / 5 < sum(rewards[:3]) / 3, rewards  # it descends instead


def test_oversampling_trains_on_the_groups_whose_rewards_differ(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = assets
    cfg = PPOConfig.model_validate(
        {
            "advantage": "grpo", "group_size": 4, "prompts_per_step": 4, "oversample": 2, "minibatch_size": 8,
            "steps": 3, "agent": {"max_new_tokens": 1, "max_turns": 1, "temperature": 1.0},
        }
    )  # fmt: skip
    trainer = ppo.PPOTrainer(cfg, data, model, tmp_path)
    tok = trainer.tokenizer
    paid = {tok.decode([i]) for i in range(0, len(tok), 4)}
    trainer.env_factory = lambda task: PickOneEnv(task, paid)
    trained: list[list[float]] = []
    score = trainer.score
    trainer.score = lambda seqs: (trained.append([s.reward for s in seqs]), score(seqs))[1]  # type: ignore[method-assign]
    for _ in range(cfg.steps):
        m = trainer.train_step()
        trainer.step += 1
        rewards = trained[-1]
        assert len(rewards) == 16  # prompts_per_step x group_size, of the 32 episodes rolled out
        sampled_differ = round((1 - m["flat_group_share"]) * 8)  # of the 8 groups rolled out
        kept_flat = sum(max(rewards[g : g + 4]) == min(rewards[g : g + 4]) for g in range(0, 16, 4))
        assert kept_flat == max(0, 4 - sampled_differ), (m, rewards)  # flat groups only fill the quota
        assert m["trained_flat_group_share"] == kept_flat / 4
