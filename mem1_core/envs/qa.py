"""The multi-objective QA environment: search with <query>, read escaped <info>, answer all at once.

One episode asks the N questions of a composed task in one prompt. A `<query>` turn returns the
top-k passages, formatted like the reference implementation (`Doc k(Title: …) text` lines and a
hint with the turns left) and escaped so document text can never act as a model action. An
`<answer>` turn ends the episode with reward = mean exact match over the objectives (answers are
`;`-separated in question order; missing ones count as wrong, extra ones are ignored). Anything
unparseable, or a search on the last allowed turn, ends the episode with reward 0.
"""

from __future__ import annotations

from typing import Any

from mem1_core.agent.tags import DEFAULT_GRAMMAR, FormatError, TagGrammar, format_info, parse_turn, qa_prompt
from mem1_core.data.types import Task
from mem1_core.envs.base import StepResult
from mem1_core.envs.retrieval import Hit, SearchBackend
from mem1_core.eval.answers import exact_match, f1

MAX_QUERY_CHARS = 2_000  # longer queries are cut before they reach the backend


def format_passages(hits: list[Hit]) -> str:
    """Reference layout: one `Doc k(Title: …) text` line per passage."""
    if not hits:
        return "No results."
    return "\n".join(
        f"Doc {k}(Title: {h.document.title}) {' '.join(h.document.text.split())}"
        for k, h in enumerate(hits, start=1)
    )


def score_answers(predictions: list[str], golds: list[tuple[str, ...]]) -> dict[str, Any]:
    """Per-objective EM/F1 for `predictions` aligned to `golds` (missing -> wrong, extra ignored)."""
    n = len(golds)
    preds = [*predictions[:n], *([""] * (n - len(predictions)))]
    em = [exact_match(p, g) if p else 0.0 for p, g in zip(preds, golds, strict=True)]
    f = [f1(p, g) if p else 0.0 for p, g in zip(preds, golds, strict=True)]
    return {
        "predictions": preds,
        "em_per_objective": em,
        "f1_per_objective": f,
        "em": sum(em) / n,
        "f1": sum(f) / n,
        "em_sum": sum(em),
        "f1_sum": sum(f),
    }


class QAEnvironment:
    """One episode of one composed QA task over a search backend (implements envs.base.Environment)."""

    def __init__(
        self,
        task: Task,
        backend: SearchBackend,
        grammar: TagGrammar = DEFAULT_GRAMMAR,
        max_turns: int | None = None,
        topk: int = 3,
    ) -> None:
        if task.n_objectives < 1:
            raise ValueError(f"task {task.id} has no objectives")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.task = task
        self.backend = backend
        self.grammar = grammar
        self.max_turns = max_turns if max_turns is not None else 2 * task.n_objectives + 2
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        self.topk = topk
        self.turn = 0
        self.done = False
        self.queries: list[str] = []

    @property
    def stop_strings(self) -> list[str]:
        return [self.grammar.close(self.grammar.query), self.grammar.close(self.grammar.answer)]

    def reset(self) -> str:
        self.turn = 0
        self.done = False
        self.queries = []
        return qa_prompt(self.task.questions, self.max_turns, self.grammar)

    def _end(self, predictions: list[str], format_error: str | None = None, **extra: Any) -> StepResult:
        self.done = True
        info = score_answers(predictions, self.task.gold_answers)
        info.update(turns=self.turn, queries=list(self.queries), **extra)
        reward = info["em"]  # 0 without predictions: no answer, no reward
        return StepResult("", done=True, reward=reward, format_error=format_error, info=info)

    def step(self, generation: str) -> StepResult:
        if self.done:
            raise RuntimeError(f"task {self.task.id}: step() after the episode ended; call reset()")
        self.turn += 1
        parsed = parse_turn(generation, self.grammar)
        action = parsed.action
        if isinstance(action, FormatError):
            return self._end([], format_error=action.reason)
        if action.kind == "answer":
            return self._end(list(action.answers))
        if action.kind != "query":
            return self._end([], format_error=f"QA takes <{self.grammar.query}> or <{self.grammar.answer}>")
        if self.turn >= self.max_turns:
            return self._end([], out_of_turns=True)
        query = action.content[:MAX_QUERY_CHARS]
        self.queries.append(query)
        hits = self.backend.search([query], self.topk)[0]
        left = self.max_turns - self.turn
        body = f"{format_passages(hits)}\nTurns left: {left}."
        return StepResult(
            format_info(body, self.grammar), done=False, info={"turns": self.turn, "hits": len(hits)}
        )
