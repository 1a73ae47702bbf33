"""How far the trainer's log-probs are from the sampler's on the same trajectories, before any update.

PPO's ratio is exp(trainer - sampler); with the same weights it must be 1 on every generated token.
The gap measured here covers everything between rollout and update: the ids kept, the stitched
sequence, padding or packing, the attention path (dense mask or shared-prompt prefix) and dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from mem1_core.agent.types import Trajectory
from mem1_core.rl.attention import AttentionBackend
from mem1_core.rl.trajectory import collate, stitch
from mem1_core.rl.value import actor_logprobs


def logprob_gap(
    lm: Any,
    trajs: list[Trajectory],
    pad_id: int,
    backend: AttentionBackend,
    pack: bool,
    temperature: float = 1.0,
) -> tuple[float, int]:
    """(max |trainer - sampler| over every generated token, number of tokens compared)."""
    seqs = [stitch(t) for t in trajs]
    if any(s.old_logprobs is None for s in seqs):
        raise ValueError("every trajectory needs the sampler's log-probs (rollouts from HFPolicy)")
    batch = collate(seqs, pad_id=pad_id, pack=pack)
    with torch.no_grad():
        lp, _ = actor_logprobs(lm, batch, backend, temperature=temperature)
    worst, count = 0.0, 0
    for seq, row in zip(seqs, batch.gather(lp), strict=True):
        mask = torch.tensor(seq.loss_mask, dtype=torch.bool)
        sampled = torch.tensor(seq.old_logprobs, dtype=torch.float32)[mask]
        if mask.any():
            worst = max(worst, float((row.float()[mask] - sampled).abs().max()))
        count += int(mask.sum())
    return worst, count
