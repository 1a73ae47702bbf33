"""Prefix reuse in the rollout engine: a stored prefix's key/value states stand in for prefilling it.

With the store on, every row must get the ids and log-probs it gets with the store off (the states
differ only in float summation order), the stored prefixes must actually be used, and nothing may
outlive a rollout, since a PPO update between rollouts would make any stored state stale.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.prefix_cache import PrefixStore
from mem1_core.agent.rollout import run_episodes, shared_prefix_len
from mem1_core.agent.types import PolicyInput
from mem1_core.config import AgentConfig, TinyModelConfig
from mem1_core.data.types import Objective, Task
from mem1_core.envs.base import StepResult
from mem1_core.models import build_tiny_model, train_tokenizer
from mem1_core.rl.exactness import logprob_gap

TEXTS = [
    "Answer the question. Search with <query>Blue Harbor</query> and keep notes in <IS>notes</IS>.",
    "<info>Doc 1 (Title: Blue Harbor) Blue Harbor is a film by Ada Lorne, born in Cesteisound.</info>",
] * 30
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=400)  # fmt: skip
TURNS = 4
TOL = 1e-5  # float32: the same ids' log-probs with and without stored prefixes
TOL_BF16 = 1e-2  # bfloat16 (8-bit mantissa): measured up to 1e-3 on the tiny model
MODES = ["mem1", "full", "truncate:2"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 400)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(TINY, tokenizer, seed=3).eval()


@dataclass
class AlwaysAnswers:
    """Takes any text and shows a passage, for exactly TURNS turns, so an untrained model has episodes."""

    task: Task
    max_turns: int = TURNS
    turn: int = 0

    @property
    def stop_strings(self) -> list[str]:
        return ["</query>"]

    def reset(self) -> str:
        return f"Answer the question. Search with <query>…</query>.\nQ1: {self.task.questions[0]}\n"

    def step(self, generation: str) -> StepResult:
        self.turn += 1
        if self.turn >= TURNS:
            return StepResult("", done=True, reward=1.0)
        return StepResult(f"<info>Doc {self.turn} Blue Harbor is a film by Ada Lorne.</info>", done=False)


def _task(k: int) -> Task:
    questions = ["Who directed Blue Harbor?", "Where was Ada Lorne born?", "When was Blue Harbor made?"]
    return Task(id=f"t{k}", objectives=(Objective(questions[k % 3], ("Ada Lorne",)),))


def _policy(model, tokenizer, tokens: int, temperature: float = 0.0) -> HFPolicy:
    return HFPolicy(
        model, tokenizer, temperature=temperature, batch_size=4, seed=0, prefix_cache_tokens=tokens
    )


def _assert_same_generations(a, b) -> None:
    assert [o.ids for o in a] == [o.ids for o in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprobs == pytest.approx(y.logprobs, abs=TOL)


# -- the store -------------------------------------------------------------------------------------


def _entry_states(n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [torch.zeros(2, n, 4)], [torch.zeros(2, n, 4)]


def test_the_store_finds_the_longest_stored_prefix_and_evicts_least_recently_used() -> None:
    store = PrefixStore(max_tokens=6)
    store.put((1, 2), *_entry_states(2))
    store.put((1, 2, 3, 4), *_entry_states(4))
    store.put((9,), *_entry_states(1))
    assert store.longest([1, 2, 3, 4, 5]).ids == (1, 2, 3, 4)
    assert store.longest([1, 2, 3]).ids == (1, 2)
    assert store.longest([1, 2]).ids == (1, 2)
    assert store.longest([2, 1]) is None
    assert store.tokens == 7
    store.get((1, 2, 3, 4))
    store.get((9,))  # (1, 2) is now the least recently used
    store.evict(keep=set())
    assert store.tokens == 5 and store.get((1, 2)) is None
    store.evict(keep={(1, 2, 3, 4)})  # already within 6 tokens: nothing goes
    assert len(store) == 2
    store.max_tokens = 0
    store.evict(keep={(9,)})
    assert [e.ids for e in [store.get((9,))]] == [(9,)] and len(store) == 1
    store.clear()
    assert len(store) == 0 and store.tokens == 0
    with pytest.raises(ValueError, match="max_tokens"):
        PrefixStore(-1)


@pytest.mark.parametrize(
    ("history_len", "keep", "expected"),
    [(0, 1, 10), (1, 1, 15), (2, 1, 10), (3, None, 39), (2, 2, 27), (3, 2, 10)],
)
def test_the_shared_prefix_is_the_previous_turn_until_the_window_slides(history_len, keep, expected) -> None:
    """A 10-id prompt and pairs of 5 output and 7 observation ids: the context and its shared prefix."""
    history = [([0] * 5, [0] * 7)] * history_len
    kept = history_len if keep is None else min(history_len, keep)
    assert shared_prefix_len(10 + 12 * kept, 10, history, keep) == expected


# -- the engine ------------------------------------------------------------------------------------


def test_stored_prefixes_give_the_same_ids_and_log_probs_as_a_fresh_prefill(model, tokenizer) -> None:
    prompt = tokenizer.encode(
        "Answer the question. Search with <query>Blue Harbor</query>", add_special_tokens=False
    )
    other = tokenizer.encode(
        "<info>Doc 1 (Title: Blue Harbor) Blue Harbor is a film", add_special_tokens=False
    )
    contexts = [
        prompt + other[:3],  # these three share the prompt
        prompt + other,
        prompt + other[:1],
        prompt,  # a prefix as long as the context: all but its last id can be reused
        other,  # no shared prefix
    ]
    prefix_lens = [len(prompt), len(prompt), len(prompt), len(prompt), 0]
    batch = [
        PolicyInput(c, _task(k), 0, prefix_len=p)
        for k, (c, p) in enumerate(zip(contexts, prefix_lens, strict=True))
    ]
    fresh = _policy(model, tokenizer, 0).generate(batch, stop=[], max_new_tokens=8)
    policy = _policy(model, tokenizer, 4096)
    stored = policy.generate(batch, stop=[], max_new_tokens=8)
    _assert_same_generations(fresh, stored)
    assert policy.prefixes is not None
    # one entry for the shared prompt (prefilled once for three rows), one for the clamped row
    assert {len(e) for e in policy.prefixes._entries.values()} == {len(prompt), len(prompt) - 1}
    assert policy.prefixes.served == 4 * len(prompt) - 1
    assert (
        policy.prefixes.prefilled == 2 * len(prompt) - 1
    )  # entries made in one call are prefilled side by side

    # a later call whose prefix extends a stored one prefills only the difference
    longer = [PolicyInput(prompt + other + [5, 6], _task(0), 1, prefix_len=len(prompt) + len(other))]
    before = policy.prefixes.prefilled
    _assert_same_generations(
        _policy(model, tokenizer, 0).generate(longer, [], 8), policy.generate(longer, [], 8)
    )
    assert policy.prefixes.prefilled - before == len(other)


@pytest.mark.parametrize("mode", MODES)
def test_rollouts_are_the_same_with_stored_prefixes_and_leave_nothing_stored(model, tokenizer, mode) -> None:
    tasks = [_task(k) for k in range(3) for _ in range(2)]  # groups of two rows on one prompt, as in GRPO
    agent = AgentConfig(mode=mode, max_new_tokens=12, temperature=1.0)
    runs = {}
    for tokens in (0, 4096):
        policy = _policy(model, tokenizer, tokens, temperature=1.0)
        runs[tokens] = run_episodes(tasks, AlwaysAnswers, policy, agent, progress=False)
        if tokens:
            assert policy.prefixes is not None and len(policy.prefixes) == 0  # cleared after the rollout
            saved = policy.prefixes.served - policy.prefixes.prefilled
            assert saved > 0, "no prefix was reused"
    for fresh, stored in zip(runs[0], runs[4096], strict=True):
        assert len(fresh.turns) == len(stored.turns) == TURNS
        for a, b in zip(fresh.turns, stored.turns, strict=True):
            assert a.context_ids == b.context_ids and a.output_ids == b.output_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


# -- bf16 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_trainer_logprobs_equal_the_samplers_in_bf16(model, tokenizer, mode) -> None:
    """In bf16 the sampler (batched, KV-cached, stored prefixes) and the trainer (one stitched pass)
    round differently; on every path the gap stays within TOL_BF16, a PPO ratio within 1% of 1."""
    lm = copy.deepcopy(model).to(torch.bfloat16)
    policy = HFPolicy(lm, tokenizer, temperature=1.0, batch_size=4, seed=1, prefix_cache_tokens=4096)
    tasks = [_task(k) for k in range(3) for _ in range(2)]
    trajs = run_episodes(
        tasks, AlwaysAnswers, policy, AgentConfig(mode=mode, max_new_tokens=12), progress=False
    )
    for backend in ("prefix", "dense"):
        for pack in (False, True):
            worst, n = logprob_gap(lm, trajs, tokenizer.pad_token_id, backend, pack)
            assert n == sum(len(turn.output_ids) for t in trajs for turn in t.turns) > 0
            assert worst < TOL_BF16, (backend, pack, worst)
