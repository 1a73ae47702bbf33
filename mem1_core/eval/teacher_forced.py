"""Teacher-forced next-token accuracy on a teacher's turns: what a model has learned to copy or decide.

Greedy EM hides where a small model fails (one wrong token ends an answer); scoring each turn of a
teacher's trajectory on that turn's own context shows it token by token, optionally split by slot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from mem1_core.agent.types import Trajectory, Turn

# (output text before the token, the token's own text) -> slot name
SlotLabeller = Callable[[str, str], str]


@torch.no_grad()
def greedy_predictions(model: torch.nn.Module, turn: Turn) -> list[int]:
    """The model's argmax at every output position of `turn`, given the turn's real context."""
    ids = torch.tensor([turn.context_ids + turn.output_ids])
    logits = model(input_ids=ids).logits[0, len(turn.context_ids) - 1 : -1]
    return [int(x) for x in logits.argmax(-1).tolist()]


def token_accuracy(
    model: torch.nn.Module,
    trajectories: Iterable[Trajectory],
    decode: Callable[[list[int]], str] | None = None,
    label: SlotLabeller | None = None,
) -> dict[str, tuple[float, int]]:
    """{slot: (share of output tokens predicted by argmax, tokens)}; one slot "all" without `label`."""
    if label is not None and decode is None:
        raise ValueError("token_accuracy: a slot labeller needs `decode` to see the text before each token")
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    was_training = model.training
    model.eval()
    try:
        for traj in trajectories:
            for turn in traj.turns:
                pred = greedy_predictions(model, turn)
                for i, target in enumerate(turn.output_ids):
                    slot = "all"
                    if label is not None and decode is not None:
                        prefix = decode(turn.output_ids[:i])
                        slot = label(prefix, decode(turn.output_ids[: i + 1])[len(prefix) :])
                    right[slot] += int(pred[i] == target)
                    total[slot] += 1
    finally:
        model.train(was_training)
    return {k: (right[k] / total[k], total[k]) for k in sorted(total)}
