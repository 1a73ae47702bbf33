"""Policies for the rollout loop: a batched Hugging Face causal LM, and a scripted QA teacher.

`HFPolicy` runs its own KV-cached decoding loop rather than `model.generate` so that nothing it does
is hidden: no generation_config defaults from a hub model (top-k, repetition penalty…) silently
change the distribution, each row stops at the first action close tag, and the returned log-probs
are exactly those of the distribution each token was drawn from — what PPO's ratio needs.

`OracleTeacher` writes the turns a good MEM1 agent would, using the task's gold data but reading
only what its context shows: its own last `<IS>`, its last query and the latest `<info>`. It is the
source of SFT warm-up data, so every turn it writes is well-formed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mem1_core.agent.tags import DEFAULT_GRAMMAR, TagGrammar, escape_observation
from mem1_core.agent.types import PolicyInput, PolicyOutput
from mem1_core.data.types import Objective
from mem1_core.eval.answers import normalize_answer

UNKNOWN = "unknown"


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class HFPolicy:
    """Batched sampling from a causal LM: left padding, KV cache, per-row stop at an action close tag.

    temperature 0 is greedy; the returned log-probs are then those of the untempered model. For
    temperature T > 0 they are log softmax(logits / T), the distribution actually sampled from.
    Nothing is masked out of that distribution, so an untrained model can emit eos or even the pad
    id; either ends its row and stays in the returned ids (they are what was sampled). Consumers
    must build attention masks from lengths, never from `ids != pad_id`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        temperature: float = 1.0,
        batch_size: int = 64,
        use_chat_template: bool = False,
        seed: int | None = None,
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
            outs = self._generate_ids([batch[i].context_ids for i in chunk], stop, max_new_tokens)
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

    @torch.no_grad()
    def _generate_ids(
        self, contexts: list[list[int]], stop: list[str], max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        stop_ids, stop_texts = self._stop_matcher(stop)
        tail = max((len(s) for s in stop_texts), default=0) + 4  # tokens enough to spell any stop string
        n, width = len(contexts), max(len(c) for c in contexts)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, ctx in enumerate(contexts):
            input_ids[r, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            mask[r, width - len(ctx) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache, logits = self._cache_of(out), out.logits[:, -1, :]
        next_pos = mask.sum(-1, keepdim=True)

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


# -- the scripted QA teacher ----------------------------------------------------------------------


@dataclass
class _Memory:
    """What the teacher's internal state says: answers found so far, and the objective it is on."""

    found: list[str] = field(default_factory=list)  # answers of objectives 1..k in order ('unknown': gave up)
    hop: int = 0  # supporting documents of the open objective (number k+1) already seen

    @property
    def current(self) -> int:
        """0-based index of the open objective: objectives are solved in question order."""
        return len(self.found)


class ScriptedTeacher:
    """A Policy whose turns come from a script reading the decoded context and the task's gold data.

    Subclasses implement `script`; outputs longer than `max_new_tokens` are cut as a model's would be
    (the episode then fails on format), so teachers obey the same budget as the models they train.
    """

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def script(self, context: str, item: PolicyInput) -> str:
        raise NotImplementedError

    def generate(self, batch: list[PolicyInput], stop: list[str], max_new_tokens: int) -> list[PolicyOutput]:
        outputs = []
        for item in batch:
            text = self.script(self.decode(item.context_ids), item)
            ids = self.encode(text)
            if len(ids) > max_new_tokens:
                ids = ids[:max_new_tokens]
                text = self.decode(ids)
            outputs.append(PolicyOutput(ids=ids, text=text))
        return outputs


class OracleTeacher(ScriptedTeacher):
    """Scripted Policy for multi-objective QA; writes compact, well-formed MEM1 turns.

    The internal state holds only what is still needed: `Found: a1; …; ak` (answers so far, in
    question order, exactly as the final answer will list them), then `| Qj: <question> needs <title>`
    for the open one (its question, so the next document is read beside what it must answer, and the
    next supporting document to find; after a bridge document this names the bridge entity). The
    last state lists every answer, so the `<answer>` after it copies from right beside it.
    An answer is recorded only once every supporting document
    of its objective has appeared in an `<info>`; a document that does not show up is searched again
    with a longer query, then given up on (`Qk=unknown`). It answers all objectives, `; `-separated,
    once it has them or when only one turn is left.

    No counter in the state: with `Found 1-k`, a model trained on k <= K objectives would have to write
    counts it never saw past K; the list itself says how many are found, and the open `Qj:` line is
    copied from the prompt, which lists every question with its number.
    """

    def __init__(self, tokenizer: Any, grammar: TagGrammar = DEFAULT_GRAMMAR, max_tries: int = 3) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.max_tries = max_tries
        g = grammar

        def tag(t: str) -> str:
            return rf"{re.escape(g.open(t))}(.*?){re.escape(g.close(t))}"

        self._state_re = re.compile(tag(g.state), re.S)
        self._query_re = re.compile(tag(g.query), re.S)
        self._info_re = re.compile(tag(g.info), re.S)
        self._found_re = re.compile(r"^Found: (.*?)(?: \| |$)", re.S)
        self._open_re = re.compile(r"(?:^| \| )Q(\d+): (.+)$", re.S)
        self._turns_left_re = re.compile(r"Turns left: (\d+)\.")
        self._max_turns_re = re.compile(r"You have (\d+) turns\.")

    def script(self, context: str, item: PolicyInput) -> str:
        return self.turn_text(context, item.task.objectives, item.turn_index)

    # -- one turn, from the decoded context -------------------------------------------------------

    def turn_text(self, context: str, objectives: Sequence[Objective], turn_index: int) -> str:
        """The teacher's next turn (`<IS>…</IS>` then one action) given the decoded context.

        Action content starts with a space (`<query> Name</query>`): byte-level BPE tokenises a word
        after a space differently from one glued to a tag, and everywhere else (question, state,
        documents) names follow a space. With the space, a query or answer is the very same ids as
        the name it copies, so a small model learns to copy instead of learning a second spelling
        of every name. The parser strips the space.
        """
        memory, last_query, info, turns_left = self._read(context, objectives, turn_index)
        query = self._decide(memory, last_query, info, objectives)
        g = self.grammar
        n = len(objectives)
        if query is None or turns_left <= 1:
            answers = memory.found + [UNKNOWN] * (n - len(memory.found))
            state = self._state_text(memory, objectives)
            action = f"{g.open(g.answer)} {f'{g.answer_separator} '.join(answers)}{g.close(g.answer)}"
        else:
            state = self._state_text(memory, objectives)
            action = f"{g.open(g.query)} {query}{g.close(g.query)}"
        return f"{g.open(g.state)}{state}{g.close(g.state)}{action}"

    def _read(
        self, context: str, objectives: Sequence[Objective], turn_index: int
    ) -> tuple[_Memory, str, str, int]:
        """(memory from the last own state, the last query, the latest info, turns left)."""
        max_turns = self._max_turns_re.search(context)
        turns_left = int(max_turns.group(1)) if max_turns else 1 << 30
        states = list(self._state_re.finditer(context))
        # On the first turn the only `<IS>…</IS>` is the prompt's example: nothing is known yet.
        if turn_index == 0 or not states:
            return _Memory(), "", "", turns_left
        last = states[-1]
        memory = self._parse_state(last.group(1).strip(), objectives)
        queries = list(self._query_re.finditer(context, last.end()))
        infos = list(self._info_re.finditer(context, last.end()))
        info = infos[-1].group(1) if infos else ""
        left = self._turns_left_re.search(info)
        if left:
            turns_left = int(left.group(1))
        return memory, queries[-1].group(1).strip() if queries else "", info, turns_left

    def _parse_state(self, state: str, objectives: Sequence[Objective]) -> _Memory:
        n = len(objectives)
        memory = _Memory()
        found = self._found_re.match(state)
        if found:
            memory.found = [a.strip() for a in found.group(1).split("; ")][:n]
        opened = self._open_re.search(state)
        if opened and memory.current < n and int(opened.group(1)) - 1 == memory.current:
            obj = objectives[memory.current]
            needs = self._needs(obj)
            needed = opened.group(2).strip().removeprefix(f"{obj.question.strip()} needs ")
            memory.hop = needs.index(needed) if needed in needs else 0
        return memory

    def _decide(
        self, memory: _Memory, last_query: str, info: str, objectives: Sequence[Objective]
    ) -> str | None:
        """Update `memory` with what `info` shows; return the next query (None: ready to answer).

        The latest info may hold documents for the next hop or objective too; using them is fair,
        since they are in view. Each loop step advances a hop or an objective, so it terminates.
        """
        while memory.current < len(objectives):
            obj = objectives[memory.current]
            needs = self._needs(obj)
            if info and self._shown(info, needs[memory.hop], obj):
                memory.hop += 1
                last_query = ""
                if memory.hop >= len(needs):
                    memory.found.append(self._clean(obj.answers[0]) if obj.answers else UNKNOWN)
                    memory.hop = 0
                continue
            queries = self._queries(obj, needs[memory.hop])
            tried = queries.index(last_query) + 1 if last_query in queries else 0
            if tried < len(queries):
                return queries[tried]
            memory.found.append(UNKNOWN)  # every query for this document failed: give up
            memory.hop, last_query = 0, ""
        return None

    def _state_text(self, memory: _Memory, objectives: Sequence[Objective]) -> str:
        parts = [f"Found: {'; '.join(memory.found)}"] if memory.found else []
        if memory.current < len(objectives):
            needs = self._needs(objectives[memory.current])
            question = objectives[memory.current].question.strip()
            parts.append(f"Q{memory.current + 1}: {question} needs {needs[memory.hop]}")
        return " | ".join(parts)

    @staticmethod
    def _clean(answer: str) -> str:
        """An answer as it can be written: ';' would split it in <answer>, '|' ends the found list."""
        return " ".join(answer.replace(";", ",").replace("|", "/").split())

    @staticmethod
    def _needs(obj: Objective) -> list[str]:
        """What must be seen, in order: the supporting titles, or the question itself without them."""
        return list(obj.supporting_titles) or [obj.question]

    def _queries(self, obj: Objective, needed: str) -> list[str]:
        candidates = [needed, f"{needed} {obj.question}", obj.question][: self.max_tries]
        return list(dict.fromkeys(candidates))

    @staticmethod
    def _shown(info: str, needed: str, obj: Objective) -> bool:
        """Did the needed document appear? Titles: a `(Title: t)` line; no titles: an answer in the text."""
        if obj.supporting_titles:
            title = escape_observation(needed)
            return f"(Title: {title})" in info or f'"{title}"' in info
        text = normalize_answer(info)
        return any(normalize_answer(a) and normalize_answer(a) in text for a in obj.answers)
