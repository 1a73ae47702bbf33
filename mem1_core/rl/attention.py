"""The MEM1 attention mask over stitched sequences: dense 4D additive, or a FlexAttention BlockMask.

Rule: token i may attend token j iff both belong to the same episode, j <= i, and j is in i's own
segment or in the prompt (segment 0). Padding (episode -1) attends only to itself so no softmax row
is empty. See trajectory.py for why this gives exact per-turn log-probs.

Dense: a float mask [B, 1, L, L] holding 0 where allowed and the dtype's minimum elsewhere. It is
*added* to attention scores by transformers' eager and sdpa paths, which return any 4D mask as-is
(masking_utils._preprocess_mask_arguments). A 0/1 float mask would be added as-is and mask nothing:
the reference implementation's bug. Dense costs O(L^2) memory.

Flex: a BlockMask from `create_block_mask` with a mask_mod reading segment/episode ids; it never
materialises L x L, and fully masked blocks are skipped. Needs a model running
attn_implementation="flex_attention" (`use_backend` switches it). In torch 2.13 its forward runs on
CPU (compiled via inductor, slow to compile; tested here) but its backward does not
("FlexAttention does not support backward on CPU").

Prefix (prefix.py): no L x L mask at all; each distinct prompt runs once and every segment runs as a
row of a padded batch against its prompt's keys/values. Exact like the others and linear in turns.
"auto" picks prefix on every device (see `resolve_backend`); dense stays the reference in tests.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.nn.attention.flex_attention import create_block_mask

from mem1_core.rl.prefix import prefix_hidden_states
from mem1_core.rl.trajectory import Batch

AttentionBackend = Literal["dense", "flex", "prefix"]

_IMPLEMENTATION = {"dense": ("eager", "sdpa"), "flex": ("flex_attention",), "prefix": ("eager", "sdpa")}


def resolve_backend(backend: str, device: torch.device | str) -> AttentionBackend:
    """'auto' -> prefix on every device; 'dense'/'flex'/'prefix' pass through.

    CPU: prefix is the fastest exact path measured (bench/results/ppo_update.md; flex has no CPU
    backward, dense is O(L^2)). CUDA, by reasoning until bench_ppo_update --gpu has run: both prefix
    and flex feed each token once and skip the cross-segment L^2, and at 0.5B+ with segments of
    hundreds of tokens the linear layers dominate; prefix also runs a group's shared prompt once
    (flex runs it per episode), needs no torch.compile (flex compiles, and recompiles on new shapes),
    and is exact on any attention kernel that takes an additive mask.
    """
    del device  # the same choice everywhere today; kept so a measured GPU result can change it
    if backend == "auto":
        return "prefix"
    if backend in ("dense", "flex", "prefix"):
        return backend  # type: ignore[return-value]
    raise ValueError(f"unknown attention backend {backend!r}: use auto, dense, flex or prefix")


def allowed(segment_ids: torch.Tensor, episode_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, L, L]: True where query i may attend key j."""
    L = segment_ids.shape[1]
    idx = torch.arange(L, device=segment_ids.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    same_ep = (episode_ids[:, :, None] == episode_ids[:, None, :]) & (episode_ids[:, :, None] >= 0)
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    visible = (seg_k == seg_q) | (seg_k == 0)
    diagonal = idx[None, :, None] == idx[None, None, :]
    return (causal & same_ep & visible) | diagonal


def dense_mask(segment_ids: torch.Tensor, episode_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask [B, 1, L, L]: 0 where allowed, finfo(dtype).min elsewhere."""
    ok = allowed(segment_ids, episode_ids)
    mask = torch.zeros(ok.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~ok, torch.finfo(dtype).min)
    return mask[:, None, :, :]


def flex_block_mask(segment_ids: torch.Tensor, episode_ids: torch.Tensor) -> Any:
    """A FlexAttention BlockMask for the same rule, built block-wise (no L x L tensor)."""
    seg = segment_ids.contiguous()
    ep = episode_ids.contiguous()

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        same_ep = (ep[b, q] == ep[b, kv]) & (ep[b, q] >= 0)
        visible = (seg[b, kv] == seg[b, q]) | (seg[b, kv] == 0)
        return ((kv <= q) & same_ep & visible) | (q == kv)

    b, L = seg.shape
    return create_block_mask(mask_mod, b, None, L, L, device=seg.device)


def build_mask(batch: Batch, backend: AttentionBackend, dtype: torch.dtype) -> Any:
    if backend == "dense":
        return dense_mask(batch.segment_ids, batch.episode_ids, dtype)
    if backend == "flex":
        return flex_block_mask(batch.segment_ids, batch.episode_ids)
    raise ValueError(f"no mask for attention backend {backend!r} (prefix builds its own per bucket)")


def use_backend(model: torch.nn.Module, backend: AttentionBackend) -> None:
    """Make sure the model's attention implementation can consume this kind of mask."""
    config = model.config
    current = getattr(config, "_attn_implementation", None)
    if current in _IMPLEMENTATION[backend]:
        return
    target = "flex_attention" if backend == "flex" else "sdpa"
    model.set_attn_implementation(target)  # type: ignore[operator]


def hidden_states(
    backbone: torch.nn.Module, batch: Batch, backend: AttentionBackend, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Last hidden states [B, L, H] of a transformers base model over a stitched batch."""
    if dtype is None:
        dtype = next(backbone.parameters()).dtype
    use_backend(backbone, backend)
    if backend == "prefix":
        return prefix_hidden_states(backbone, batch, dtype)
    mask = build_mask(batch, backend, dtype)
    out = backbone(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state
