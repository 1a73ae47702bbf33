"""The model policy of the rollout loop: a batched Hugging Face causal LM (teachers: agent.teachers).

`HFPolicy` runs its own KV-cached decoding loop rather than `model.generate` so that nothing it does
is hidden: no generation_config defaults from a hub model (top-k, repetition penalty…) silently
change the distribution, each row stops at the first action close tag, and the returned log-probs
are exactly those of the distribution each token was drawn from — what PPO's ratio needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from mem1_core.agent.prefix_cache import PrefixEntry, PrefixStore
from mem1_core.agent.types import PolicyInput, PolicyOutput


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class _Prefill:
    """A batch after its prefill: the cache, each row's last logits, attention mask and next position.

    Row r's cache holds its base prefix in slots [P - p_r, P) and its new ids in [P + S - s_r, P + S)
    (P, S the widest base and new parts); the mask marks exactly those slots.
    """

    cache: Any
    logits: torch.Tensor
    mask: torch.Tensor
    next_pos: torch.Tensor
    base_width: int
    base_lens: list[int]
    new_lens: list[int]

    def row_states(self, r: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row r's key and value states per layer, base then new ids: [heads, p_r + s_r, head_dim]."""
        width, p_r, s_r = self.mask.shape[1], self.base_lens[r], self.new_lens[r]
        keys, values = [], []
        for layer in self.cache.layers:
            for out, states in ((keys, layer.keys), (values, layer.values)):
                row = states[r]
                out.append(
                    torch.cat([row[:, self.base_width - p_r : self.base_width], row[:, width - s_r :]], 1)
                )
        return keys, values


class HFPolicy:
    """Batched sampling from a causal LM: left padding, KV cache, per-row stop at an action close tag.

    temperature 0 is greedy; the returned log-probs are then those of the untempered model. For
    temperature T > 0 they are log softmax(logits / T), the distribution actually sampled from.
    Nothing is masked out of that distribution, so an untrained model can emit eos or even the pad
    id; either ends its row and stays in the returned ids (they are what was sampled). Consumers
    must build attention masks from lengths, never from `ids != pad_id`.

    With `prefix_cache_tokens` > 0 the leading `PolicyInput.prefix_len` ids of each row are
    prefilled once per distinct prefix and their key/value states reused across rows and calls
    (agent.prefix_cache); `clear_prefix_cache` must run whenever the weights change.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        temperature: float = 1.0,
        batch_size: int = 64,
        use_chat_template: bool = False,
        seed: int | None = None,
        prefix_cache_tokens: int = 0,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with models.load_model or set one")
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.batch_size = batch_size
        self.use_chat_template = use_chat_template
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        # transformers 5 names the KV cache argument `cache`; remote-code models may still say past_key_values
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.pad_id = int(tokenizer.pad_token_id)
        eos = tokenizer.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        self.prefixes = PrefixStore(prefix_cache_tokens) if prefix_cache_tokens > 0 else None

    def clear_prefix_cache(self) -> None:
        """Forget every stored prefix: their states belong to the weights that computed them."""
        if self.prefixes is not None:
            self.prefixes.clear()

    # -- text <-> ids -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """The task prompt as ids: a user turn of the chat template for instruct models, else plain."""
        if not (self.use_chat_template and getattr(self.tokenizer, "chat_template", None)):
            return self.encode(text)
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    # -- generation -------------------------------------------------------------------------------

    def generate(self, batch: list[PolicyInput], stop: list[str], max_new_tokens: int) -> list[PolicyOutput]:
        """One generation per input, in input order; rows of similar length are batched together."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        for k, item in enumerate(batch):
            if not item.context_ids:
                raise ValueError(f"batch item {k} (task {item.task.id}): empty context")
        order = sorted(range(len(batch)), key=lambda i: len(batch[i].context_ids))
        results: dict[int, PolicyOutput] = {}
        for chunk in _chunks(order, self.batch_size):
            contexts = [batch[i].context_ids for i in chunk]
            outs = self._generate_ids(contexts, [batch[i].prefix_len for i in chunk], stop, max_new_tokens)
            for i, (ids, logps) in zip(chunk, outs, strict=True):
                results[i] = PolicyOutput(ids=ids, text=self.decode(ids), logprobs=logps)
        return [results[i] for i in range(len(batch))]

    def _stop_matcher(self, stop: list[str]) -> tuple[set[int], list[str]]:
        """Stops that are one token are matched by id; the rest by the decoded tail of each row."""
        single: set[int] = set()
        textual: list[str] = []
        for s in stop:
            ids = self.encode(s)
            if len(ids) == 1:
                single.add(ids[0])
            else:
                textual.append(s)
        return single, textual

    def _cache_of(self, out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _extend(self, bases: list[PrefixEntry | None], news: list[list[int]]) -> _Prefill:
        """One forward over each row's new ids on top of its stored base prefix (or none)."""
        n = len(news)
        base_lens = [len(b) if b is not None else 0 for b in bases]
        new_lens = [len(x) for x in news]
        width_p, width_s = max(base_lens), max(new_lens)
        input_ids = torch.full((n, width_s), self.pad_id, dtype=torch.long)
        positions = torch.zeros((n, width_s), dtype=torch.long)
        mask = torch.zeros((n, width_p + width_s), dtype=torch.long)
        for r, (p_r, new) in enumerate(zip(base_lens, news, strict=True)):
            s_r = len(new)
            input_ids[r, width_s - s_r :] = torch.tensor(new, dtype=torch.long)
            positions[r, width_s - s_r :] = torch.arange(p_r, p_r + s_r)
            mask[r, width_p - p_r : width_p] = 1
            mask[r, width_p + width_s - s_r :] = 1
        kwargs: dict[str, Any] = {}
        if width_p > 0:
            n_layers = len(next(b for b in bases if b is not None).keys)
            kwargs[self._cache_arg] = DynamicCache(
                ddp_cache_data=[
                    (
                        self._left_padded(bases, width_p, "keys", i),
                        self._left_padded(bases, width_p, "values", i),
                    )
                    for i in range(n_layers)
                ]
            )
        input_ids, positions, mask = (
            input_ids.to(self.device),
            positions.to(self.device),
            mask.to(self.device),
        )
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        next_pos = torch.tensor(
            [[p + s] for p, s in zip(base_lens, new_lens, strict=True)], device=self.device
        )
        return _Prefill(
            self._cache_of(out), out.logits[:, -1, :], mask, next_pos, width_p, base_lens, new_lens
        )

    def _left_padded(
        self, bases: list[PrefixEntry | None], width: int, kind: str, layer: int
    ) -> torch.Tensor:
        """A layer's stored states of all rows, right-aligned in `width` slots: [rows, heads, width, dim]."""
        ref = next(getattr(b, kind)[layer] for b in bases if b is not None)
        states = torch.zeros(
            (len(bases), ref.shape[0], width, ref.shape[2]), dtype=ref.dtype, device=self.device
        )
        for r, base in enumerate(bases):
            if base is not None:
                states[r, :, width - len(base) :] = getattr(base, kind)[layer]
        return states

    def _prefill(self, contexts: list[list[int]], prefix_lens: list[int]) -> _Prefill:
        """Prefill the batch, reusing stored prefixes and storing the new ones first."""
        store = self.prefixes
        if store is None or not any(prefix_lens):
            return self._extend([None] * len(contexts), contexts)
        keys = [
            tuple(ctx[: max(0, min(p, len(ctx) - 1))]) for ctx, p in zip(contexts, prefix_lens, strict=True)
        ]
        missing = sorted({k for k in keys if k and store.get(k) is None}, key=len)
        if missing:
            bases = [store.longest(k) for k in missing]
            built = self._extend(
                bases,
                [list(k[len(b) if b is not None else 0 :]) for k, b in zip(missing, bases, strict=True)],
            )
            for r, key in enumerate(missing):
                store.put(key, *built.row_states(r))
            store.prefilled += sum(built.new_lens)
            del built
        entries = [store.get(k) if k else None for k in keys]
        store.served += sum(len(k) for k in keys)
        prefill = self._extend(entries, [ctx[len(k) :] for ctx, k in zip(contexts, keys, strict=True)])
        store.evict(keep=set(keys))
        return prefill

    @torch.no_grad()
    def _generate_ids(
        self, contexts: list[list[int]], prefix_lens: list[int], stop: list[str], max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        stop_ids, stop_texts = self._stop_matcher(stop)
        tail = max((len(s) for s in stop_texts), default=0) + 4  # tokens enough to spell any stop string
        n = len(contexts)
        prefill = self._prefill(contexts, prefix_lens)
        cache, logits, mask, next_pos = prefill.cache, prefill.logits, prefill.mask, prefill.next_pos
        del prefill

        gen: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        live = list(range(n))  # original row of each batch row still decoding
        for step in range(max_new_tokens):
            scores = logits.float()
            if self.temperature > 0:
                scores = scores / self.temperature
            logp = torch.log_softmax(scores, dim=-1)
            if self.temperature > 0:
                token = torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(-1)
            else:
                token = logp.argmax(-1)
            token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
            keep: list[int] = []
            for b, row in enumerate(live):
                t = int(token[b])
                gen[row].append(t)
                logps[row].append(float(token_logp[b]))
                finished = t in stop_ids or t in self.eos_ids or t == self.pad_id
                if not finished and stop_texts:
                    text = self.decode(gen[row][-tail:])
                    finished = any(s in text for s in stop_texts)
                if not finished:
                    keep.append(b)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(live):  # drop finished rows from the batch and the KV cache
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                token, mask, next_pos = token[idx], mask[idx], next_pos[idx]
                live = [live[b] for b in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                **{self._cache_arg: cache},
            )
            cache, logits = self._cache_of(out), out.logits[:, -1, :]
            next_pos = next_pos + 1
        return list(zip(gen, logps, strict=True))
