"""Trajectory records: the exact tokens of every turn, so training can rebuild what the model saw."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mem1_core.data.types import Task


@dataclass
class Turn:
    """One model generation: the token ids of the context it saw, and the ids it wrote.

    For every mode, `context_ids` is exactly what was fed to the model at this turn (prompt first),
    and `output_ids` exactly what it generated (not re-tokenised text).
    """

    context_ids: list[int]
    output_ids: list[int]
    output_text: str
    observation: str = ""
    format_error: str | None = None
    logprobs: list[float] | None = None  # sampling log-probs from the behaviour policy, when known

    @property
    def context_len(self) -> int:
        return len(self.context_ids)


@dataclass
class Trajectory:
    task_id: str
    mode: str
    n_objectives: int
    prompt_len: int
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    predictions: list[str] = field(default_factory=list)
    gold: list[list[str]] = field(default_factory=list)
    done: bool = False
    format_error: str | None = None
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def peak_tokens(self) -> int:
        """Largest context at any turn, counting what the model wrote in that turn."""
        return max((t.context_len + len(t.output_ids) for t in self.turns), default=0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        turns = [Turn(**t) for t in d.pop("turns", [])]
        return cls(**d, turns=turns)


@dataclass
class PolicyInput:
    """One pending generation. `task` lets a scripted teacher see gold answers; models ignore it.

    `prefix_len` says how many leading context ids this row shares with other rows or with an
    earlier turn's context plus output (the prompt; in full context, the whole previous turn), so an
    engine may prefill them once and reuse their key/value states; 0 promises nothing.
    """

    context_ids: list[int]
    task: Task
    turn_index: int
    prefix_len: int = 0


@dataclass
class PolicyOutput:
    ids: list[int]
    text: str
    logprobs: list[float] | None = None


class Policy(Protocol):
    """Batched generation over many episodes at once; each output stops at the end of an action tag."""

    def generate(
        self, batch: list[PolicyInput], stop: list[str], max_new_tokens: int
    ) -> list[PolicyOutput]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...
