"""Teacher-forced token accuracy (mem1_core.eval.teacher_forced), against a token-by-token loop."""

from __future__ import annotations

import random

import pytest
import torch
from rl_helpers import random_trajectory, tiny_lm

from mem1_core.agent.types import Trajectory, Turn
from mem1_core.eval.teacher_forced import greedy_predictions, token_accuracy


def _one_token_at_a_time(lm: torch.nn.Module, turn: Turn) -> list[int]:
    preds = []
    for i in range(len(turn.output_ids)):
        ids = torch.tensor([turn.context_ids + turn.output_ids[:i]])
        with torch.no_grad():
            preds.append(int(lm(input_ids=ids).logits[0, -1].argmax()))
    return preds


def test_predictions_match_a_token_by_token_loop_and_accuracy_counts_them() -> None:
    rng = random.Random(3)
    lm = tiny_lm(seed=2)
    trajs = [random_trajectory(rng, "mem1", n) for n in (1, 3, 5)]
    right = total = 0
    for traj in trajs:
        for turn in traj.turns:
            want = _one_token_at_a_time(lm, turn)
            assert greedy_predictions(lm, turn) == want
            right += sum(p == y for p, y in zip(want, turn.output_ids, strict=True))
            total += len(turn.output_ids)
    assert token_accuracy(lm, trajs) == {"all": (right / total, total)}
    lm.train()
    token_accuracy(lm, trajs)
    assert lm.training, "the model's train/eval mode is restored"


def test_slots_split_tokens_by_the_text_before_them() -> None:
    """A model that always writes token 7: right exactly where the teacher wrote 7."""

    class Sevens(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> object:
            logits = torch.zeros(*input_ids.shape, 10)
            logits[..., 7] = 1.0
            return type("Out", (), {"logits": logits})()

    turn = Turn(context_ids=[1, 2], output_ids=[7, 3, 7, 7], output_text="")
    traj = Trajectory(task_id="t", mode="mem1", n_objectives=1, prompt_len=2, turns=[turn])

    def decode(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)

    def label(prefix: str, piece: str) -> str:
        return "first" if not prefix else "rest"

    got = token_accuracy(Sevens(), [traj], decode=decode, label=label)
    assert got == {"first": (1.0, 1), "rest": (2 / 3, 3)}
    with pytest.raises(ValueError, match="needs `decode`"):
        token_accuracy(Sevens(), [traj], label=label)
