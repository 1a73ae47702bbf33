"""The scripted QA teacher, the source of SFT warm-up data for the QA domain.

`OracleTeacher` writes the turns a good MEM1 agent would, using the task's gold data but reading
only what its context shows: its own last `<IS>`, its last query and the latest `<info>`. Every
turn it writes is well-formed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mem1_core.agent.scripted import ScriptedTeacher
from mem1_core.agent.types import PolicyInput
from mem1_core.data.types import Objective
from mem1_core.protocol.scoring import normalize_answer
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar, escape_observation

UNKNOWN = "unknown"


@dataclass
class _Memory:
    """What the teacher's internal state says: answers found so far, and the objective it is on."""

    found: list[str] = field(default_factory=list)  # answers of objectives 1..k in order ('unknown': gave up)
    hop: int = 0  # supporting documents of the open objective (number k+1) already seen

    @property
    def current(self) -> int:
        """0-based index of the open objective: objectives are solved in question order."""
        return len(self.found)


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
