"""HFPolicy: batched decoding, stops, and log-probs equal to a plain forward pass; OracleTeacher turns."""

from __future__ import annotations

import pytest
import torch

from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.qa_oracle import UNKNOWN, OracleTeacher
from mem1_core.agent.types import PolicyInput
from mem1_core.config import TinyModelConfig
from mem1_core.data.types import Objective, Task
from mem1_core.envs.qa import qa_prompt
from mem1_core.models import build_tiny_model, train_tokenizer
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, format_info, parse_turn

TEXTS = [
    "Who directed the film Blue Harbor? Blue Harbor was directed by Zimi Zojo in 1965.",
    "In which city was Zimi Zojo born? Zimi Zojo was born in Cesteisound.",
    "<IS>Found: Paris | Q2 needs Krezo Group</IS><query>Krezo Group</query>",
] * 30
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=400)  # fmt: skip
TASK = Task(
    id="t",
    objectives=(
        Objective("In which city was Zimi Zojo born?", ("Cesteisound",), ("person-1",), ("Zimi Zojo",)),
        Objective(
            "Who directed the film Blue Harbor?",
            ("Dagrek Po",),
            ("film-2", "person-3"),
            ("Blue Harbor", "Dagrek Po"),
            hops=2,
        ),
    ),
)


Q2 = "Who directed the film Blue Harbor?"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 400)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(TINY, tokenizer, seed=1)


def _contexts(tokenizer) -> list[list[int]]:
    texts = ["Who directed", "<IS>Found: Paris | Q2 needs", "Zimi Zojo was born in Cesteisound. In which"]
    texts += ["x", "Blue Harbor was directed by Zimi Zojo in 1965 <query>"]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def _inputs(contexts: list[list[int]]) -> list[PolicyInput]:
    return [PolicyInput(c, TASK, 0) for c in contexts]


def _forward_logprobs(model, context: list[int], output: list[int], temperature: float) -> list[float]:
    ids = torch.tensor([context + output])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1)
    start = len(context) - 1
    return [float(logp[start + k, t]) for k, t in enumerate(output)]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprobs_match_a_plain_forward_pass(model, tokenizer, temperature: float) -> None:
    """Equivalence guard for PPO: batched, left-padded, KV-cached log-probs == one unpadded forward."""
    policy = HFPolicy(model, tokenizer, temperature=temperature, batch_size=3, seed=0)
    contexts = _contexts(tokenizer)
    outs = policy.generate(_inputs(contexts), stop=[], max_new_tokens=12)
    for ctx, out in zip(contexts, outs, strict=True):
        assert out.logprobs is not None and len(out.logprobs) == len(out.ids) > 0
        expected = _forward_logprobs(model, ctx, out.ids, temperature)
        assert out.logprobs == pytest.approx(expected, abs=2e-4)


def test_batched_greedy_equals_one_by_one(model, tokenizer) -> None:
    policy = HFPolicy(model, tokenizer, temperature=0.0, batch_size=64)
    contexts = _contexts(tokenizer)
    together = policy.generate(_inputs(contexts), stop=[], max_new_tokens=10)
    for ctx, out in zip(contexts, together, strict=True):
        alone = policy.generate(_inputs([ctx]), stop=[], max_new_tokens=10)[0]
        assert alone.ids == out.ids
        assert len(out.ids) == 10 and tokenizer.pad_token_id not in out.ids


def test_sampling_is_seeded(model, tokenizer) -> None:
    contexts = _contexts(tokenizer)
    a = HFPolicy(model, tokenizer, temperature=1.0, seed=7).generate(_inputs(contexts), [], 8)
    b = HFPolicy(model, tokenizer, temperature=1.0, seed=7).generate(_inputs(contexts), [], 8)
    assert [o.ids for o in a] == [o.ids for o in b]


def test_each_row_stops_at_its_first_stop_string(model, tokenizer) -> None:
    """Stops by token id (a tag) and by decoded text (multi-token) trim right after the stop."""
    policy = HFPolicy(model, tokenizer, temperature=0.0, batch_size=2)
    contexts = _contexts(tokenizer)
    free = policy.generate(_inputs(contexts), stop=[], max_new_tokens=16)
    # pick, per row, a stop made from that row's own greedy continuation
    row, pos = next((r, 4) for r, o in enumerate(free) if len(o.ids) >= 8)
    ids = free[row].ids
    for stop in (tokenizer.decode(ids[pos : pos + 1]), tokenizer.decode(ids[pos : pos + 2])):
        cut = next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k]))
        outs = policy.generate(_inputs(contexts), stop=[stop], max_new_tokens=16)
        assert outs[row].ids == ids[:cut]
        assert outs[row].text.endswith(stop) or stop in outs[row].text
        assert outs[row].logprobs is not None and len(outs[row].logprobs) == cut
        for other, out in enumerate(outs):  # every row is a prefix of its free run, cut at the stop
            assert out.ids == free[other].ids[: len(out.ids)]


def test_chat_template_wraps_the_prompt(model, tokenizer) -> None:
    tok = train_tokenizer(TEXTS, 400)
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    policy = HFPolicy(model, tok, use_chat_template=True)
    assert policy.decode(policy.encode_prompt("Answer 1")) == "[user] Answer 1\n[assistant] "
    assert HFPolicy(model, tok).encode_prompt("hi") == tok.encode("hi", add_special_tokens=False)


def test_bad_arguments_are_rejected(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="temperature"):
        HFPolicy(model, tokenizer, temperature=-1)
    with pytest.raises(ValueError, match="empty context"):
        HFPolicy(model, tokenizer).generate([PolicyInput([], TASK, 0)], [], 4)


# -- OracleTeacher -------------------------------------------------------------------------------


def _info(*titles: str, left: int = 3) -> str:
    lines = [f"Doc {k}(Title: {t}) {t} is a thing." for k, t in enumerate(titles, 1)]
    return format_info("\n".join(lines) + f"\nTurns left: {left}.")


def _turn(oracle: OracleTeacher, context: str, index: int) -> str:
    text = oracle.turn_text(context, TASK.objectives, index)
    assert parse_turn(text).ok, text
    return text


def test_oracle_solves_one_and_two_hop_objectives_from_what_it_sees(tokenizer) -> None:
    oracle = OracleTeacher(tokenizer)
    prompt = qa_prompt(TASK.questions, 6)
    t0 = _turn(oracle, prompt, 0)
    assert t0 == "<IS>Q1: In which city was Zimi Zojo born? needs Zimi Zojo</IS><query> Zimi Zojo</query>"
    t1 = _turn(oracle, prompt + t0 + _info("Zimi Zojo", "Other"), 1)
    assert t1 == f"<IS>Found: Cesteisound | Q2: {Q2} needs Blue Harbor</IS><query> Blue Harbor</query>"
    t2 = _turn(oracle, prompt + t1 + _info("Blue Harbor"), 2)  # bridge found: now the director's doc
    assert t2 == f"<IS>Found: Cesteisound | Q2: {Q2} needs Dagrek Po</IS><query> Dagrek Po</query>"
    t3 = _turn(oracle, prompt + t2 + _info("Dagrek Po"), 3)
    assert t3 == "<IS>Found: Cesteisound; Dagrek Po</IS><answer> Cesteisound; Dagrek Po</answer>"


def test_oracle_records_nothing_the_info_did_not_show(tokenizer) -> None:
    oracle = OracleTeacher(tokenizer)
    prompt = qa_prompt(TASK.questions, 8)
    t0 = _turn(oracle, prompt, 0)
    t1 = _turn(oracle, prompt + t0 + _info("Zimi Dogar"), 1)  # a near miss, not the document
    assert "Found" not in t1 and "<query> Zimi Zojo In which city was Zimi Zojo born?</query>" in t1
    t2 = _turn(oracle, prompt + t1 + _info("Zimi Dogar"), 2)
    assert "<query> In which city was Zimi Zojo born?</query>" in t2
    t3 = _turn(oracle, prompt + t2 + _info(), 3)  # every query failed: give up on Q1, go on with Q2
    assert t3 == f"<IS>Found: {UNKNOWN} | Q2: {Q2} needs Blue Harbor</IS><query> Blue Harbor</query>"


def test_oracle_answers_on_the_last_turn_with_what_it_has(tokenizer) -> None:
    oracle = OracleTeacher(tokenizer)
    prompt = qa_prompt(TASK.questions, 6)
    state = f"<IS>Found: Cesteisound | Q2: {Q2} needs Blue Harbor</IS><query> Blue Harbor</query>"
    text = _turn(oracle, prompt + state + _info("Nothing", left=1), 4)
    assert text.endswith(f"<answer> Cesteisound; {UNKNOWN}</answer>")
    assert _turn(oracle, qa_prompt(TASK.questions, 1), 0).endswith(f"<answer> {UNKNOWN}; {UNKNOWN}</answer>")


def test_oracle_output_is_cut_at_max_new_tokens(tokenizer) -> None:
    oracle = OracleTeacher(tokenizer, DEFAULT_GRAMMAR)
    ids = tokenizer.encode(qa_prompt(TASK.questions, 6), add_special_tokens=False)
    out = oracle.generate([PolicyInput(ids, TASK, 0)], stop=[], max_new_tokens=3)[0]
    assert len(out.ids) == 3 and not parse_turn(out.text).ok


def test_oracle_state_keeps_the_open_question_even_when_it_says_needs(tokenizer) -> None:
    """The state repeats the open question; a question containing ' needs ' must not confuse the hop."""
    question = "Who needs the director of the film Blue Harbor?"
    two_hop = Objective(question, ("Dagrek Po",), ("film-2", "person-3"), ("Blue Harbor", "Dagrek Po"), 2)
    task = Task(id="n", objectives=(two_hop,))
    oracle = OracleTeacher(tokenizer)
    prompt = qa_prompt(task.questions, 6)
    t0 = oracle.turn_text(prompt, task.objectives, 0)
    assert t0 == f"<IS>Q1: {question} needs Blue Harbor</IS><query> Blue Harbor</query>"
    t1 = oracle.turn_text(prompt + t0 + _info("Blue Harbor"), task.objectives, 1)
    assert t1 == f"<IS>Q1: {question} needs Dagrek Po</IS><query> Dagrek Po</query>"
    t2 = oracle.turn_text(prompt + t1 + _info("Other"), task.objectives, 2)  # a miss: same hop, longer query
    assert t2.startswith(f"<IS>Q1: {question} needs Dagrek Po</IS><query> Dagrek Po {question}")
