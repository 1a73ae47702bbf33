"""The stitched, masked forward pass equals re-running every turn's real context (fp32, CPU)."""

from __future__ import annotations

import random

import pytest
import torch
from rl_helpers import PAD, random_trajectory, reference_per_turn, tiny_lm

from mem1_core.rl.attention import allowed, dense_mask, hidden_states, resolve_backend
from mem1_core.rl.trajectory import collate, stitch
from mem1_core.rl.value import Critic, actor_logprobs

TOL = 1e-4


def _critic(lm: torch.nn.Module) -> Critic:
    critic = Critic(lm)
    torch.nn.init.normal_(critic.head.weight, std=1.0)  # zero-init would make value checks trivial
    torch.nn.init.normal_(critic.head.bias, std=1.0)
    return critic


def _check_equivalence(lm, trajs, backend: str, pack: bool, contiguous_positions: bool = False) -> float:
    critic = _critic(lm)
    refs = [reference_per_turn(lm, critic.head, t) for t in trajs]
    seqs = [stitch(t) for t in trajs]
    batch = collate(seqs, pad_id=PAD, pack=pack, max_len=4096)
    if contiguous_positions:  # the reference implementation's approximation
        batch.position_ids = torch.arange(batch.shape[1]).expand(batch.shape[0], -1).clone()
    with torch.no_grad():
        lp, _ = actor_logprobs(lm, batch, backend)
        values = critic(batch, backend)
    worst = 0.0
    for k, (traj, seq) in enumerate(zip(trajs, seqs, strict=True)):
        row, off = batch.placement[k]
        for t, (ref_lp, ref_v) in enumerate(zip(*refs[k], strict=True)):
            idx = [i for i in range(len(seq)) if seq.turn_index[i] == t and seq.loss_mask[i]]
            assert len(idx) == len(traj.turns[t].output_ids)
            got_lp = lp[row, [off + i for i in idx]]
            got_v = values[row, [off + i for i in idx]]
            worst = max(worst, (got_lp - ref_lp).abs().max().item(), (got_v - ref_v).abs().max().item())
    return worst


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["mem1", "full", "truncate:2"])
def test_dense_stitched_pass_equals_per_turn_runs(attn: str, mode: str) -> None:
    rng = random.Random(hash((attn, mode)) % 1000)
    lm = tiny_lm(attn)
    trajs = [random_trajectory(rng, mode, n, task_id=f"{mode}-{n}") for n in range(1, 9)]
    worst = _check_equivalence(lm, trajs, "dense", pack=False)
    assert worst < TOL, f"max abs diff {worst}"
    worst_packed = _check_equivalence(lm, trajs, "dense", pack=True)
    assert worst_packed < TOL, f"packed: max abs diff {worst_packed}"


def test_contiguous_positions_are_detectably_wrong() -> None:
    """The paper's contiguous position ids are an approximation; the equivalence check must see it."""
    rng = random.Random(3)
    lm = tiny_lm("eager")
    trajs = [random_trajectory(rng, "mem1", n, task_id=f"c-{n}") for n in (3, 5, 8)]
    assert _check_equivalence(lm, trajs, "dense", pack=False) < TOL
    assert _check_equivalence(lm, trajs, "dense", pack=False, contiguous_positions=True) > 100 * TOL


def test_flex_stitched_pass_equals_per_turn_runs() -> None:
    """FlexAttention BlockMask on CPU (torch.compile via inductor): one packed batch, all modes."""
    rng = random.Random(7)
    lm = tiny_lm("eager")
    trajs = [
        random_trajectory(rng, mode, n, task_id=f"{mode}-{n}")
        for mode in ("mem1", "full", "truncate:1")
        for n in (1, 3, 8)
    ]
    worst = _check_equivalence(lm, trajs, "flex", pack=True)
    assert worst < TOL, f"flex: max abs diff {worst}"


@pytest.mark.parametrize("backend", ["dense", "flex", "prefix"])
def test_future_tokens_cannot_change_earlier_outputs(backend: str) -> None:
    rng = random.Random(3)
    lm = tiny_lm("eager")
    seq = stitch(random_trajectory(rng, "mem1", 4))
    batch = collate([seq], pad_id=PAD)
    with torch.no_grad():
        base = hidden_states(lm.base_model, batch, backend)
        for cut in (len(seq) - 1, len(seq) // 2):
            changed = collate([seq], pad_id=PAD)
            changed.input_ids[0, cut:] = (changed.input_ids[0, cut:] + 17) % 199 + 1
            after = hidden_states(lm.base_model, changed, backend)
            assert torch.equal(changed.input_ids[0, :cut], batch.input_ids[0, :cut])
            assert (after[0, :cut] - base[0, :cut]).abs().max().item() < 1e-5
            assert (after[0, cut:] - base[0, cut:]).abs().max().item() > 1e-3  # the change did something
        # Other turns' segments are invisible: changing turn 1 leaves turns 2 and 3 untouched.
        seg = torch.tensor(seq.segment_ids)
        changed = collate([seq], pad_id=PAD)
        changed.input_ids[0, seg == 2] = (changed.input_ids[0, seg == 2] + 5) % 199 + 1
        after = hidden_states(lm.base_model, changed, backend)
        keep = seg != 2
        assert (after[0, keep] - base[0, keep]).abs().max().item() < 1e-5


def test_dense_mask_is_additive_min_not_zero_one() -> None:
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, 0]])
    ep = torch.tensor([[0, 0, 0, 0, 0, 0, -1]])
    mask = dense_mask(seg, ep, torch.float32)
    assert mask.shape == (1, 1, 7, 7)
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    ok = allowed(seg, ep)[0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],  # turn 2 sees the prompt, not turn 1
            [1, 1, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(ok, expected)


def test_resolve_backend() -> None:
    assert resolve_backend("auto", "cpu") == "prefix"
    assert resolve_backend("auto", "cuda") == "prefix"
    assert resolve_backend("flex", "cpu") == "flex"
    assert resolve_backend("dense", "cuda") == "dense"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("paged", "cpu")
