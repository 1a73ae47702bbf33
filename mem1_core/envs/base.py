"""The environment contract shared by every domain (QA, shop): text in, text out, reward at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mem1_core.data.types import Task
from mem1_core.protocol.tags import TagGrammar


@dataclass
class StepResult:
    """What the environment answers to one model turn.

    `observation` is the full, already escaped and tag-wrapped text appended to the context
    (e.g. '<info>Doc 1(Title: …) …</info>'); empty when the episode is done.
    """

    observation: str
    done: bool
    reward: float = 0.0
    format_error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Environment(Protocol):
    """One episode of one task. `reset` returns the prompt text; `step` takes the raw generation."""

    grammar: TagGrammar
    task: Task
    max_turns: int

    def reset(self) -> str: ...

    def step(self, generation: str) -> StepResult: ...

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a model turn (close tags of this domain's actions)."""
        ...
