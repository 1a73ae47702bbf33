"""Key/value states of the token prefixes a rollout repeats, so that each is prefilled once.

Every MEM1 turn's context starts with the same task prompt, the rows of a GRPO group share that
prompt, and a full-context turn starts with the previous turn's whole context. Prefilling those
tokens again each turn is most of a CPU rollout's cost. A key/value state depends only on the ids
before it (causal attention; rotary positions count from the first real token), so the state of a
stored prefix is reused exactly, up to float summation order.

Entries are valid only for the weights that computed them: the rollout loop clears the store at the
start and end of every rollout (`HFPolicy.clear_prefix_cache`), so a PPO update never meets a stale
entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PrefixEntry:
    """One prefix's ids and its per-layer key and value states, each [heads, len(ids), head_dim]."""

    ids: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_used: int = 0

    def __len__(self) -> int:
        return len(self.ids)


class PrefixStore:
    """Prefixes by their ids, evicted least recently used first once they hold over `max_tokens`."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: dict[tuple[int, ...], PrefixEntry] = {}
        self._clock = 0
        self.served = 0  # prefix tokens the batches took from the store
        self.prefilled = 0  # tokens prefilled to create entries; served - prefilled is the saving

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self._entries.values())

    def _touch(self, entry: PrefixEntry | None) -> PrefixEntry | None:
        """Mark `entry` the most recently used (eviction drops the least recently used first)."""
        if entry is not None:
            self._clock += 1
            entry.last_used = self._clock
        return entry

    def get(self, ids: tuple[int, ...]) -> PrefixEntry | None:
        return self._touch(self._entries.get(ids))

    def longest(self, ids: Sequence[int]) -> PrefixEntry | None:
        """The longest stored entry whose ids start `ids` (it may equal them)."""
        best: PrefixEntry | None = None
        for key, entry in self._entries.items():
            if (
                len(key) <= len(ids)
                and (best is None or len(key) > len(best))
                and tuple(ids[: len(key)]) == key
            ):
                best = entry
        return self._touch(best)

    def put(self, ids: tuple[int, ...], keys: list[torch.Tensor], values: list[torch.Tensor]) -> PrefixEntry:
        entry = PrefixEntry(ids, keys, values)
        self._entries[ids] = entry
        self._touch(entry)
        return entry

    def evict(self, keep: set[tuple[int, ...]] | None = None) -> None:
        """Drop least recently used entries (never those in `keep`) until at most max_tokens remain."""
        keep = keep or set()
        total = self.tokens
        for key in sorted(self._entries, key=lambda k: self._entries[k].last_used):
            if total <= self.max_tokens:
                break
            if key not in keep:
                total -= len(self._entries.pop(key))

    def clear(self) -> None:
        self._entries.clear()
