"""Scripted teachers for the shop domain: they read their context and each instruction's goal.

It writes the turns a good MEM1 agent would: a compact internal state (which instruction it is on,
what it wants, how many searches it has tried) and one WebShop action. Everything it needs is in
what the context keeps in MEM1 mode (the prompt, its last internal state, its last action and the
last page), so the same teacher works in mem1, full and truncate:K modes.

Two kinds. `knows_target=True` (the oracle: evaluation's upper bound, reward 1.0 on seeded tasks)
writes the gold product id into its state, clicks it when listed and leaves any other item page.
`knows_target=False` (the SFT teacher) acts only on what a model could see: it clicks the listed
result whose title matches most of the wanted attributes within the budget and buys what it opened.
SFT on the first kind taught a tiny model to write product ids it had never been shown, and it
did no better than random valid actions; the second kind can be imitated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mem1_core.agent.scripted import ScriptedTeacher
from mem1_core.agent.types import PolicyInput
from mem1_core.data.shop_catalog import ShopGoal, goals_from_task, normalize_text
from mem1_core.envs.shop import BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PREV_PAGE
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar

MAX_PAGES = 3  # pages of results looked through before searching again
MAX_TRIES = 2  # knows_target: 1: attribute keywords, 2: the target's title; beyond: the best result seen
STATE_ATTRIBUTES = 3  # goal attributes repeated in the internal state

_RESULT_RE = re.compile(r"^\[([^\]\s]+)\] ", re.M)
_RESULT_LINE_RE = re.compile(r"^\[([^\]\s]+)\] (.*?) \| \$([0-9.]+)\s*$", re.M)
_PAGE_RE = re.compile(r"\(page (\d+) of (\d+)\)")
_ITEM_RE = re.compile(r"^Item \[([^\]\s]+)\]", re.M)
_BOUGHT_RE = re.compile(r"^Bought \[", re.M)
_NON_OPTION_LINES = ("Item ", "Features:", "Selected:", "Actions:", "Invalid action", "[")


@dataclass(frozen=True)
class _Memory:
    """What the teacher keeps in its internal state between turns."""

    item: int  # 0-based index of the instruction being bought
    tries: int  # searches made for this instruction


def _state_re(grammar: TagGrammar) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(grammar.open(grammar.state))}Buying item (\d+) of \d+\b.*?Tries (\d+)\.", re.S
    )


def _info_re(grammar: TagGrammar) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(grammar.open(grammar.info))}(.*?){re.escape(grammar.close(grammar.info))}", re.S
    )


def _available_options(page: str) -> set[str]:
    values: set[str] = set()
    for line in page.splitlines()[1:]:
        if line.startswith(_NON_OPTION_LINES) or ": " not in line:
            continue
        values.update(normalize_text(v) for v in line.split(": ", 1)[1].split(" | "))
    return values


def _more_pages(page: str) -> bool:
    """Is there a next results page worth looking at (within MAX_PAGES)?"""
    pages = _PAGE_RE.search(page)
    return pages is not None and int(pages.group(1)) < min(int(pages.group(2)), MAX_PAGES)


def _is_selected(page: str, value: str) -> bool:
    for line in page.splitlines():
        if line.startswith("Selected: "):
            chosen = [
                normalize_text(part.split("=", 1)[-1]) for part in line[len("Selected: ") :].split(", ")
            ]
            return normalize_text(value) in chosen
    return False


class ShopOracleTeacher(ScriptedTeacher):
    """Scripted Policy for shop tasks (agent.types.Policy); `tokenizer` is any HF tokenizer."""

    def __init__(self, tokenizer: Any, grammar: TagGrammar = DEFAULT_GRAMMAR, knows_target: bool = True):
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.knows_target = knows_target
        self._state_pattern = _state_re(grammar)
        self._info_pattern = _info_re(grammar)

    def script(self, context: str, item: PolicyInput) -> str:
        return self.turn_text(context, goals_from_task(item.task))

    # -- one turn, from the context text ------------------------------------------------------------

    def turn_text(self, context: str, goals: list[ShopGoal]) -> str:
        """The teacher's next turn given the decoded context."""
        memory, page = self._read(context)
        if _BOUGHT_RE.search(page):
            memory = _Memory(memory.item + 1, 0)
        item = min(memory.item, len(goals) - 1)
        goal = goals[item]
        action, tries = self._decide(page, goal, memory.tries)
        g = self.grammar
        state = self._state_text(item, len(goals), goal, tries)
        return f"{g.open(g.state)}{state}{g.close(g.state)}{g.open(g.action)}{action}{g.close(g.action)}"

    def _read(self, context: str) -> tuple[_Memory, str]:
        """(memory from the last teacher state, the page shown after it; '' on the first turn)."""
        states = list(self._state_pattern.finditer(context))
        if not states:
            return _Memory(0, 0), ""
        last = states[-1]
        infos = list(self._info_pattern.finditer(context, last.end()))
        page = infos[-1].group(1) if infos else ""
        return _Memory(int(last.group(1)) - 1, int(last.group(2))), page

    @staticmethod
    def best_result(page: str, goal: ShopGoal) -> tuple[str, int] | None:
        """(id, score) of the listed result that best fits the goal from its title and price alone.

        Score: wanted attributes (and the query's words) found in the title, plus one for a price
        within budget; ties go to the higher-listed result, as the search engine ranked it."""
        best: tuple[str, int] | None = None
        for asin, title, price in _RESULT_LINE_RE.findall(page):
            words = f" {normalize_text(title)} "
            score = sum(f" {normalize_text(a)} " in words for a in (*goal.attributes, goal.query) if a)
            score += float(price) <= goal.price_upper
            if best is None or score > best[1]:
                best = (asin, score)
        return best

    def _decide(self, page: str, goal: ShopGoal, tries: int) -> tuple[str, int]:
        """(action, searches made so far) for the page in view."""
        item_match = _ITEM_RE.search(page)
        if item_match:
            if self.knows_target and item_match.group(1) != goal.asin and tries <= MAX_TRIES:
                return f"click[{PREV_PAGE}]", tries
            available = _available_options(page)
            for value in goal.options:
                if normalize_text(value) in available and not _is_selected(page, value):
                    return f"click[{value}]", tries
            return f"click[{BUY_NOW}]", tries
        if page.lstrip().startswith("Results for") or "\nResults for" in page:
            if self.knows_target:
                return self._click_target(page, goal, tries)
            best = self.best_result(page, goal)
            full = len([a for a in (*goal.attributes, goal.query) if a]) + 1
            more = _more_pages(page)
            if best is not None and (best[1] == full or not more):
                return f"click[{best[0]}]", tries
            if more:
                return f"click[{NEXT_PAGE}]", tries
            return f"click[{BACK_TO_SEARCH}]", tries  # nothing listed: search again
        # the search page (first turn, after a purchase, after going back)
        tries += 1
        if self.knows_target and tries > 1:
            return f"search[{goal.name}]", tries
        words = [*goal.attributes, goal.query] if tries == 1 else [goal.query or goal.category]
        return f"search[{' '.join(w for w in words if w) or goal.category}]", tries

    @staticmethod
    def _click_target(page: str, goal: ShopGoal, tries: int) -> tuple[str, int]:
        listed = _RESULT_RE.findall(page)
        if goal.asin in listed:
            return f"click[{goal.asin}]", tries
        if tries > MAX_TRIES and listed:
            return f"click[{listed[0]}]", tries
        if _more_pages(page):
            return f"click[{NEXT_PAGE}]", tries
        return f"click[{BACK_TO_SEARCH}]", tries

    def _state_text(self, item: int, n: int, goal: ShopGoal, tries: int) -> str:
        # a summary, not a copy of the instruction (the prompt keeps that): it fits in 96 new tokens
        want = ", ".join([*goal.attributes[:STATE_ATTRIBUTES], *goal.options])
        return (
            f"Buying item {item + 1} of {n}: {goal.query or 'item'} ({want}) under ${goal.price_upper:.2f}. "
            + (f"Target [{goal.asin}]. " if self.knows_target else "")
            + f"Tries {tries}."
        )
