"""Exact stitched hidden states at a cost linear in the number of turns: shared prompt KV + segments.

The MEM1 mask (attention.py) lets a token see only the task prompt and the causal prefix of its own
segment. So instead of one L x L masked pass, run
1. every distinct prompt once (episodes of a group share the same prompt ids: one pass per group),
   recording its keys and values per layer (with grad, so gradients flow into the shared prompt);
2. every segment as a row of one padded batch whose keys are [its prompt's KV | its own KV], with a
   4D additive mask [n_seg, 1, W, P + W]: prompt columns visible (up to that prompt's length),
   causal within the segment; and the segments' own (generation-time) position ids;
3. gather the hidden states back into the stitched [B, L, H] layout, so `pred_index` readers
   (actor_logprobs, Critic) are unchanged.
Attention costs sum_t W_t * (P + W_t) instead of L^2, and no token is run twice except the kept
context that stitching itself stores once more per turn (as per-turn re-runs do, without the prompt).

Segments are bucketed by length (sorted, a new bucket when one is much shorter than the bucket's
first), so padding stays small when the first turn is short and later ones long.

The KV hand-over uses a tiny `Cache` subclass whose `update` prepends the prompt's KV and stores
nothing: it relies only on the `cache.update(key, value, layer_idx)` contract of transformers 5.x
decoder layers, not on DynamicCache internals. The 4D mask is returned as-is by
masking_utils._preprocess_mask_arguments, so the cache's length is never asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache

from mem1_core.rl.trajectory import Batch

BUCKET_RATIO = 0.75  # a segment shorter than this share of its bucket's width starts a new bucket


class _PrefixKV(Cache):
    """Records each layer's keys/values (prefix None) or prepends a given per-layer prefix; stores nothing."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        super().__init__(layers=[])
        self.prefix = prefix
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(  # type: ignore[override]
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefix is None:
            self.recorded.append((key_states, value_states))
            return key_states, value_states
        k, v = self.prefix[layer_idx]
        return torch.cat([k, key_states], dim=-2), torch.cat([v, value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:  # type: ignore[override]
        return 0 if self.prefix is None else int(self.prefix[layer_idx][0].shape[-2])


@dataclass
class Bucket:
    """Segments padded to one width W: ids/positions [n, W], their lengths, and their prompt's index."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    lengths: torch.Tensor  # [n] long
    prompt_of: torch.Tensor  # [n] long, index into the plan's prompts


@dataclass
class PrefixPlan:
    """What to run (distinct prompts, segment buckets) and where each stitched token's state comes from.

    `source[b * L + l]` indexes the rows of cat(prompt states [U * P], bucket states..., one zero row).
    """

    prompt_ids: torch.Tensor  # [U, P] right-padded
    prompt_pos: torch.Tensor  # [U, P]
    prompt_lens: torch.Tensor  # [U] long
    buckets: list[Bucket]
    source: torch.Tensor  # [B * L] long

    @property
    def n_tokens_run(self) -> int:
        """Tokens fed to the model, padding included (what the pass costs in the linear layers)."""
        return int(self.prompt_ids.numel()) + sum(int(b.input_ids.numel()) for b in self.buckets)


def _buckets(lengths: list[int], ratio: float) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    out: list[list[int]] = []
    for k in order:
        if out and lengths[k] >= ratio * lengths[out[-1][0]]:
            out[-1].append(k)
        else:
            out.append([k])
    return out


def plan(batch: Batch, ratio: float = BUCKET_RATIO) -> PrefixPlan:
    """Split a padded or packed stitched batch into distinct prompts and length-bucketed segments."""
    ids = batch.input_ids.cpu()
    pos = batch.position_ids.cpu()
    segs = batch.segment_ids.cpu()
    width = ids.shape[1]
    prompt_index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    prompts: list[tuple[torch.Tensor, torch.Tensor]] = []
    # per segment: (row, start, length, prompt index); per episode: (row, start, P, prompt index)
    seg_spans: list[tuple[int, int, int, int]] = []
    prompt_spans: list[tuple[int, int, int, int]] = []
    for (row, off), n in zip(batch.placement, batch.lengths, strict=True):
        values, counts = torch.unique_consecutive(segs[row, off : off + n], return_counts=True)
        if int(values[0]) != 0:
            raise ValueError(f"stitched episode at row {row}, offset {off} does not start with its prompt")
        p = int(counts[0])
        key = (tuple(ids[row, off : off + p].tolist()), tuple(pos[row, off : off + p].tolist()))
        u = prompt_index.setdefault(key, len(prompts))
        if u == len(prompts):
            prompts.append((ids[row, off : off + p], pos[row, off : off + p]))
        prompt_spans.append((row, off, p, u))
        start = off + p
        for c in counts[1:].tolist():
            seg_spans.append((row, start, c, u))
            start += c
    p_max = max(len(x) for x, _ in prompts)
    prompt_ids = torch.zeros((len(prompts), p_max), dtype=torch.long)
    prompt_pos = torch.zeros((len(prompts), p_max), dtype=torch.long)
    for u, (x, q) in enumerate(prompts):
        prompt_ids[u, : len(x)] = x
        prompt_pos[u, : len(x)] = q
        prompt_pos[u, len(x) :] = torch.arange(p_max - len(x)) + (int(q[-1]) + 1)  # in rotary range
    source = torch.full((ids.shape[0] * width,), -1, dtype=torch.long)
    for row, off, p, u in prompt_spans:
        source[row * width + off : row * width + off + p] = u * p_max + torch.arange(p)
    buckets: list[Bucket] = []
    base = prompt_ids.numel()
    for members in _buckets([s[2] for s in seg_spans], ratio):
        w = seg_spans[members[0]][2]
        b_ids = torch.zeros((len(members), w), dtype=torch.long)
        b_pos = torch.zeros((len(members), w), dtype=torch.long)
        for j, k in enumerate(members):
            row, start, n, _ = seg_spans[k]
            b_ids[j, :n] = ids[row, start : start + n]
            b_pos[j, :n] = pos[row, start : start + n]
            b_pos[j, n:] = torch.arange(w - n) + (int(pos[row, start + n - 1]) + 1)
            source[row * width + start : row * width + start + n] = base + j * w + torch.arange(n)
        lengths = torch.tensor([seg_spans[k][2] for k in members])
        prompt_of = torch.tensor([seg_spans[k][3] for k in members])
        buckets.append(Bucket(b_ids, b_pos, lengths, prompt_of))
        base += len(members) * w
    zero_row = base
    source[source < 0] = zero_row
    return PrefixPlan(prompt_ids, prompt_pos, torch.tensor([len(x) for x, _ in prompts]), buckets, source)


def _additive(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    return mask.masked_fill_(~ok, torch.finfo(dtype).min)[:, None]


def prompt_mask(lens: torch.Tensor, p: int, dtype: torch.dtype) -> torch.Tensor:
    """[U, 1, P, P]: causal; right padding is never seen by real rows (and sees its causal prefix)."""
    idx = torch.arange(p, device=lens.device)
    return _additive((idx[None, :, None] >= idx[None, None, :]).expand(len(lens), -1, -1), dtype)


def segment_mask(
    prompt_lens: torch.Tensor, seg_lens: torch.Tensor, p: int, w: int, dtype: torch.dtype
) -> torch.Tensor:
    """[n, 1, W, P + W]: a segment row sees its prompt's real columns and its own causal prefix."""
    del seg_lens  # right padding sits after every real row, so causality already hides it
    kp = torch.arange(p, device=prompt_lens.device)
    q = torch.arange(w, device=prompt_lens.device)
    see_prompt = (kp[None, :] < prompt_lens[:, None])[:, None, :].expand(-1, w, -1)
    causal = (q[:, None] >= q[None, :])[None].expand(len(prompt_lens), -1, -1)
    return _additive(torch.cat([see_prompt, causal], dim=-1), dtype)


def prefix_hidden_states(backbone: torch.nn.Module, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """Last hidden states [B, L, H] over a stitched batch, equal to the dense-mask pass's (see module doc)."""
    if backbone.training and any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules()):
        # transformers drops `cache` inside checkpointed layers, which would silently hide the prompt.
        raise ValueError(
            "ppo.attention 'prefix' does not support gradient checkpointing; use 'dense' or 'flex'"
        )
    device = batch.input_ids.device
    pl = plan(batch)
    lens = pl.prompt_lens.to(device)
    p = pl.prompt_ids.shape[1]
    record = _PrefixKV()
    prompt_out = backbone(
        input_ids=pl.prompt_ids.to(device),
        attention_mask=prompt_mask(lens, p, dtype),
        position_ids=pl.prompt_pos.to(device),
        cache=record,
        use_cache=False,
    ).last_hidden_state
    parts = [prompt_out.reshape(-1, prompt_out.shape[-1])]
    for b in pl.buckets:
        which = b.prompt_of.to(device)
        prefix = [(k.index_select(0, which), v.index_select(0, which)) for k, v in record.recorded]
        w = b.input_ids.shape[1]
        out = backbone(
            input_ids=b.input_ids.to(device),
            attention_mask=segment_mask(lens.index_select(0, which), b.lengths.to(device), p, w, dtype),
            position_ids=b.position_ids.to(device),
            cache=_PrefixKV(prefix),
            use_cache=False,
        ).last_hidden_state
        parts.append(out.reshape(-1, out.shape[-1]))
    parts.append(prompt_out.new_zeros((1, prompt_out.shape[-1])))
    flat = torch.cat(parts, dim=0)
    return flat.index_select(0, pl.source.to(device)).view(*batch.shape, -1)
