"""Stitching: layout, loss mask (outputs only), positions, and padded vs packed collation."""

from __future__ import annotations

import random

import pytest
import torch
from rl_helpers import INFO_LO, PAD, random_trajectory, tiny_lm

from mem1_core.agent.types import Trajectory, Turn
from mem1_core.rl.trajectory import collate, stitch
from mem1_core.rl.value import actor_logprobs


def _hand_made() -> Trajectory:
    prompt = [1, 2, 3]
    t0 = Turn(context_ids=prompt, output_ids=[10, 11], output_text="", logprobs=[-0.1, -0.2])
    t1 = Turn(context_ids=[*prompt, 10, 11, 201, 202], output_ids=[12], output_text="", logprobs=[-0.3])
    t2 = Turn(context_ids=[*prompt, 12, 203], output_ids=[13, 14], output_text="", logprobs=[-0.4, -0.5])
    return Trajectory(task_id="x", mode="mem1", n_objectives=1, prompt_len=3, turns=[t0, t1, t2], reward=1.0)


def test_stitch_layout_positions_and_predictors() -> None:
    s = stitch(_hand_made())
    assert s.input_ids == [1, 2, 3, 10, 11, 10, 11, 201, 202, 12, 12, 203, 13, 14]
    assert s.segment_ids == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3]
    assert s.position_ids == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 3, 4, 5, 6]
    assert s.loss_mask == [0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1]
    assert s.turn_index == [-1, -1, -1, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    # Each segment's first token is predicted by the last prompt token, the rest by their left neighbour.
    assert s.pred_index == [-1, 0, 1, 2, 3, 2, 5, 6, 7, 8, 2, 10, 11, 12]
    assert s.old_logprobs == [0, 0, 0, -0.1, -0.2, 0, 0, 0, 0, -0.3, 0, 0, -0.4, -0.5]
    assert s.last_loss_index == 13 and s.n_loss_tokens == 5 and s.reward == 1.0


@pytest.mark.parametrize("mode", ["mem1", "full", "truncate:1"])
def test_no_loss_on_prompt_or_observation_tokens(mode: str) -> None:
    rng = random.Random(11)
    for n in range(1, 9):
        traj = random_trajectory(rng, mode, n)
        s = stitch(traj)
        assert s.n_loss_tokens == sum(len(t.output_ids) for t in traj.turns)
        assert not any(s.loss_mask[: traj.prompt_len])
        for i, tok in enumerate(s.input_ids):
            if tok >= INFO_LO:  # observation ids never carry loss
                assert s.loss_mask[i] == 0
        # The loss tokens, read in order, are exactly the generated ids.
        got = [tok for tok, m in zip(s.input_ids, s.loss_mask, strict=True) if m]
        assert got == [x for t in traj.turns for x in t.output_ids]


def test_stitch_rejects_turns_with_another_prompt() -> None:
    traj = _hand_made()
    traj.turns[2].context_ids[0] = 99
    with pytest.raises(ValueError, match="turn 2 context does not start with the task prompt"):
        stitch(traj)
    empty = Trajectory(task_id="e", mode="mem1", n_objectives=1, prompt_len=3)
    with pytest.raises(ValueError, match="no turns"):
        stitch(empty)


def test_collate_pads_and_packs_with_placement() -> None:
    rng = random.Random(5)
    seqs = [stitch(random_trajectory(rng, "mem1", n)) for n in (1, 2, 3, 4)]
    padded = collate(seqs, pad_id=PAD, pack=False)
    assert padded.shape == (4, max(len(s) for s in seqs))
    packed = collate(seqs, pad_id=PAD, pack=True, max_len=max(len(s) for s in seqs) * 2)
    assert packed.shape[0] < 4
    for b in (padded, packed):
        assert b.n_tokens == sum(len(s) for s in seqs)
        for k, s in enumerate(seqs):
            row, off = b.placement[k]
            assert b.input_ids[row, off : off + len(s)].tolist() == s.input_ids
            assert (b.episode_ids[row, off : off + len(s)] == k).all()
        per_seq = [torch.arange(len(s), dtype=torch.float32) for s in seqs]
        back = b.gather(b.scatter(per_seq))
        assert all(torch.equal(x, y) for x, y in zip(back, per_seq, strict=True))
    with pytest.raises(ValueError, match="over max_len"):
        collate(seqs, pad_id=PAD, max_len=5)


def test_packed_and_padded_batches_give_the_same_logprobs() -> None:
    rng = random.Random(9)
    lm = tiny_lm("sdpa")
    seqs = [stitch(random_trajectory(rng, m, n)) for m in ("mem1", "full") for n in (1, 4, 7)]
    padded = collate(seqs, pad_id=PAD, pack=False)
    packed = collate(seqs, pad_id=PAD, pack=True, max_len=max(len(s) for s in seqs) + 40)
    assert packed.shape[0] < padded.shape[0]
    with torch.no_grad():
        lp_pad, ent_pad = actor_logprobs(lm, padded, "dense", with_entropy=True)
        lp_pack, ent_pack = actor_logprobs(lm, packed, "dense", with_entropy=True)
    for a, b in zip(padded.gather(lp_pad), packed.gather(lp_pack), strict=True):
        assert (a - b).abs().max().item() < 1e-5
    for a, b in zip(padded.gather(ent_pad), packed.gather(ent_pack), strict=True):
        assert (a - b).abs().max().item() < 1e-5
