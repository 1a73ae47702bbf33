"""The MEM1 tag grammar: a parser that never raises on model output, escaping, state/info formatting.

Tag names live in one `TagGrammar` so a reference-compatible grammar (`<think>`, `<search>`,
`<information>`) is one object away. Model output is untrusted: the parser takes the first
well-formed internal state and the first action after it, and reports anything else as a
`FormatError` value instead of raising. Observations are escaped so retrieved text can never be
read back as a model action (prompt injection through documents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

MAX_PARSE_CHARS = 200_000  # longer generations are cut before parsing; no regex runs on megabytes


@dataclass(frozen=True)
class TagGrammar:
    state: str = "IS"
    query: str = "query"
    answer: str = "answer"
    info: str = "info"
    answer_separator: str = ";"
    # WebShop-style domains put `search[...]` / `click[...]` inside this tag instead of <query>.
    action: str = "action"

    def open(self, tag: str) -> str:
        return f"<{tag}>"

    def close(self, tag: str) -> str:
        return f"</{tag}>"

    @property
    def all_tags(self) -> tuple[str, ...]:
        return (self.state, self.query, self.answer, self.info, self.action)

    @property
    def special_tokens(self) -> list[str]:
        """Open and close tags, added to trained tokenizers as single tokens."""
        return [t for tag in self.all_tags for t in (self.open(tag), self.close(tag))]

    @property
    def action_stops(self) -> list[str]:
        """Strings that end a turn: the close tag of any action."""
        return [self.close(self.query), self.close(self.answer), self.close(self.action)]


DEFAULT_GRAMMAR = TagGrammar()
REFERENCE_GRAMMAR = TagGrammar(state="think", query="search", answer="answer", info="information")


@dataclass(frozen=True)
class Action:
    kind: Literal["query", "answer", "action"]
    content: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormatError:
    reason: str


@dataclass(frozen=True)
class ParsedTurn:
    state: str | None
    action: Action | FormatError
    raw_len: int = 0

    @property
    def ok(self) -> bool:
        return isinstance(self.action, Action)


@dataclass
class _Patterns:
    """Openers only: tag pairs are matched by `_first_pair` in linear time.

    A backtracking regex like `<(q|a)>(.*?)</\\1>` rescans to the end of the text from every unclosed
    opener, which is quadratic: 200k characters of `<query>` took ~50 s. Model output is untrusted.
    """

    grammar: TagGrammar
    state_open: str = field(init=False)
    action_opener: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        g = self.grammar
        self.state_open = g.open(g.state)
        kinds = "|".join(re.escape(t) for t in (g.query, g.answer, g.action))
        self.action_opener = re.compile(rf"<({kinds})>")


_PATTERN_CACHE: dict[TagGrammar, _Patterns] = {}


def _patterns(grammar: TagGrammar) -> _Patterns:
    if grammar not in _PATTERN_CACHE:
        _PATTERN_CACHE[grammar] = _Patterns(grammar)
    return _PATTERN_CACHE[grammar]


def _first_pair(text: str, opener: re.Pattern[str]) -> tuple[str, int, int, int] | None:
    """Leftmost `<t>…</t>` (t any tag `opener` matches), closed by the nearest `</t>`, in linear time.

    Same match as the regex `<(t1|t2)>(.*?)</\\1>` with re.S: (tag, content start, content end, end).
    """
    last_close: dict[str, int] = {}
    for m in opener.finditer(text):
        tag = m.group(1)
        if tag not in last_close:
            last_close[tag] = text.rfind(f"</{tag}>")
        if last_close[tag] >= m.end():
            close = text.find(f"</{tag}>", m.end())
            return tag, m.end(), close, close + len(tag) + 3
    return None


def _first_state(text: str, open_tag: str, close_tag: str) -> tuple[int, int, int] | None:
    """The leftmost `<IS>…</IS>` with the nearest close: (content start, content end, end)."""
    start = text.find(open_tag)
    if start < 0:
        return None
    close = text.find(close_tag, start + len(open_tag))
    if close < 0:
        return None
    return start + len(open_tag), close, close + len(close_tag)


def split_answers(text: str, separator: str = ";") -> tuple[str, ...]:
    """Tolerant split of '<answer>a1; a2</answer>' content into per-objective answers."""
    parts = [p.strip() for p in text.split(separator)]
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


def parse_turn(text: str, grammar: TagGrammar = DEFAULT_GRAMMAR) -> ParsedTurn:
    """Parse one generation: optional `<IS>…</IS>` then exactly one action. Never raises."""
    if not isinstance(text, str):
        return ParsedTurn(None, FormatError("output is not text"))
    raw_len = len(text)
    text = text[:MAX_PARSE_CHARS]
    pats = _patterns(grammar)
    state_span = _first_state(text, pats.state_open, grammar.close(grammar.state))
    state = text[state_span[0] : state_span[1]].strip() if state_span else None
    rest = text[state_span[2] :] if state_span else text
    action_span = _first_pair(rest, pats.action_opener)
    if action_span is None:
        reason = "no closed action tag" if state is not None else "no internal state and no action"
        return ParsedTurn(state, FormatError(reason), raw_len)
    tag, content = action_span[0], rest[action_span[1] : action_span[2]].strip()
    if tag == grammar.answer:
        answers = split_answers(content, grammar.answer_separator)
        if not answers:
            return ParsedTurn(state, FormatError("empty answer"), raw_len)
        return ParsedTurn(state, Action("answer", content, answers), raw_len)
    if not content:
        return ParsedTurn(state, FormatError(f"empty <{tag}>"), raw_len)
    kind: Literal["query", "action"] = "query" if tag == grammar.query else "action"
    return ParsedTurn(state, Action(kind, content), raw_len)


def escape_observation(text: str) -> str:
    """Neutralise anything tag-like in environment text so it can never parse as an action."""
    return text.replace("<", "‹").replace(">", "›")


def format_info(body: str, grammar: TagGrammar = DEFAULT_GRAMMAR) -> str:
    return f"{grammar.open(grammar.info)}{escape_observation(body)}{grammar.close(grammar.info)}"


def format_state(state: str, grammar: TagGrammar = DEFAULT_GRAMMAR) -> str:
    return f"{grammar.open(grammar.state)}{state}{grammar.close(grammar.state)}"
