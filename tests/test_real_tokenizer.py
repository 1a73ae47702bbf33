"""Token-in-token-out on a real pretrained LM's tokenizer (SmolLM2-135M-Instruct, tags 3 tokens each).

What the sampler drew is what the trainer scores: contexts are the prompt ids plus kept output ids
plus each observation encoded once, a multi-token stop tag ends its row at the token completing it,
and the stitched, masked pass gives the sampler's log-probs in every memory mode, padded and packed,
on the prefix and the dense paths. Episodes here run 4 turns in an environment that always answers,
so the untrained base's free text still makes multi-turn episodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from mem1_core import models
from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.rollout import build_context, kept_turns, run_episodes
from mem1_core.agent.types import PolicyInput, Trajectory
from mem1_core.config import AgentConfig
from mem1_core.data.types import Objective, Task
from mem1_core.envs.base import StepResult
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar
from mem1_core.rl.exactness import logprob_gap
from mem1_core.rl.trajectory import collate, stitch
from mem1_core.rl.value import actor_logprobs

TURNS = 4
MODES = ["mem1", "full", "truncate:2"]
TOL = 1e-4  # float32, the sampler's and the trainer's log-probs of the same ids
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class AlwaysAnswers:
    """An environment that takes any text and answers with a passage, for exactly TURNS turns."""

    task: Task
    grammar: TagGrammar = DEFAULT_GRAMMAR
    max_turns: int = TURNS
    turn: int = 0
    seen: list[str] = field(default_factory=list)

    @property
    def stop_strings(self) -> list[str]:
        return ["</query>", "</answer>"]

    def reset(self) -> str:
        return f"Answer 1 question. Search with <query>…</query>.\nQ1: {self.task.questions[0]}\n"

    def step(self, generation: str) -> StepResult:
        self.turn += 1
        self.seen.append(generation)
        if self.turn >= TURNS:
            return StepResult("", done=True, reward=0.5)
        body = (
            f"Doc 1(Title: Blue Harbor) Blue Harbor is a film by Ada Lorne.\nTurns left: {TURNS - self.turn}."
        )
        return StepResult(f"<info>{body}</info>", done=False)


@pytest.fixture(scope="module")
def smollm() -> tuple[Any, Any]:
    return models.load_model("smollm2-135m-instruct")


def _tasks(n: int) -> list[Task]:
    questions = ["Who directed Blue Harbor?", "Where was Ada Lorne born?", "When was Tujai Orchard made?"]
    return [Task(id=f"t{k}", objectives=(Objective(questions[k % 3], ("Ada Lorne",)),)) for k in range(n)]


def _rollouts(smollm: tuple[Any, Any], mode: str, seed: int) -> tuple[list[Trajectory], list[AlwaysAnswers]]:
    model, tokenizer = smollm
    # the engine as the trainers run it: prompt and previous-turn states reused from the prefix store
    policy = HFPolicy(model, tokenizer, temperature=1.0, batch_size=8, seed=seed, prefix_cache_tokens=32768)
    envs: list[AlwaysAnswers] = []

    def factory(task: Task) -> AlwaysAnswers:
        envs.append(AlwaysAnswers(task))
        return envs[-1]

    agent = AgentConfig(mode=mode, max_new_tokens=10, temperature=1.0)
    return run_episodes(_tasks(3), factory, policy, agent, progress=False), envs


@pytest.fixture(scope="module")
def rollouts(smollm: tuple[Any, Any]) -> dict[str, tuple[list[Trajectory], list[AlwaysAnswers]]]:
    return {mode: _rollouts(smollm, mode, seed=k) for k, mode in enumerate(MODES)}


@pytest.mark.parametrize("mode", MODES)
def test_contexts_are_ids_never_text_encoded_again(smollm, rollouts, mode: str) -> None:
    _, tokenizer = smollm
    trajs, envs = rollouts[mode]
    for traj, env in zip(trajs, envs, strict=True):
        assert len(traj.turns) == TURNS
        prompt = traj.turns[0].context_ids
        history: list[tuple[list[int], list[int]]] = []
        for t, turn in enumerate(traj.turns):
            assert turn.context_ids == build_context(prompt, history, kept_turns(mode)), f"turn {t}"
            assert len(turn.logprobs or []) == len(turn.output_ids)
            assert turn.output_text == tokenizer.decode(turn.output_ids)
            assert env.seen[t] == turn.output_text, "the environment reads the decoded sampled ids"
            history.append((turn.output_ids, tokenizer.encode(turn.observation, add_special_tokens=False)))


@pytest.mark.parametrize("backend", ["prefix", "dense"])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_trainer_logprobs_equal_the_samplers(smollm, rollouts, mode: str, pack: bool, backend: str) -> None:
    model, tokenizer = smollm
    trajs, _ = rollouts[mode]
    worst, n = logprob_gap(model, trajs, tokenizer.pad_token_id, backend, pack)  # type: ignore[arg-type]
    assert n == sum(len(turn.output_ids) for t in trajs for turn in t.turns) > 0
    assert worst < TOL


def test_changing_one_turns_output_moves_no_other_turns_logprobs(smollm, rollouts) -> None:
    model, tokenizer = smollm
    traj = next(t for t in rollouts["mem1"][0] if len(t.turns[1].output_ids) >= 2)
    edited = copy.deepcopy(traj)
    out = edited.turns[1].output_ids
    out[-1] = tokenizer.encode(" Harbor", add_special_tokens=False)[0]  # rewrite the turn's last token
    scores = []
    for tr in (traj, edited):
        batch = collate([stitch(tr)], pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            lp, _ = actor_logprobs(model, batch, "prefix", temperature=1.0)
        seq = stitch(tr)
        per_turn = [
            [float(lp[0, i]) for i in range(len(seq)) if seq.turn_index[i] == t and seq.loss_mask[i]]
            for t in range(TURNS)
        ]
        scores.append(per_turn)
    before, after = scores
    for t in (0, 2, 3):
        assert before[t] == after[t], f"turn {t} moved when turn 1 changed"
    assert before[1][:-1] == after[1][:-1] and before[1][-1] != after[1][-1]


def test_a_multi_token_stop_tag_ends_its_row_at_the_completing_token(smollm) -> None:
    model, tokenizer = smollm
    assert len(tokenizer.encode("</query>", add_special_tokens=False)) > 1, "a real multi-token stop tag"
    policy = HFPolicy(model, tokenizer, temperature=0.0)
    # Teach the greedy continuation nothing: the prompt itself makes "</query>" the likely next text.
    text = "Repeat exactly: <query>Blue Harbor</query>\n<query>Blue Harbor</query>\n<query>Blue Harbor"
    task = _tasks(1)[0]
    out = policy.generate([PolicyInput(policy.encode(text), task, 0)], ["</query>"], max_new_tokens=24)[0]
    assert out.text.endswith("</query>") or "</query>" in out.text
    # the row stopped at the token that completed the tag, and that token is kept
    assert "</query>" not in tokenizer.decode(out.ids[:-1])
    assert "</query>" in tokenizer.decode(out.ids)
