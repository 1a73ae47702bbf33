"""A WebShop-style shopping environment in the MEM1 grammar, for 1..N purchase instructions.

Each turn the model writes `<IS>…</IS><action>search[…]</action>` or `<action>click[…]</action>`;
pages come back as `<info>…</info>` (escaped: product text can never read as a model action).
Pages and actions follow WebShop: `search[q]` on the search page -> a results page (`page_size`
products, paged with `click[next >]` / `click[< prev]`); `click[<asin or title>]` -> the product
page; `click[<option value>]` selects an option; `click[buy now]` buys; `click[back to search]`.
A task with N instructions is bought in order: each `buy now` scores the current instruction and
returns to the search page for the next. The episode ends when all N are bought (reward = mean
instruction reward), at the turn limit (unbought instructions score 0), or on a format error
(reward 0). An action that is well-formed but not possible here is answered with an observation
saying why, and costs a turn.

Reward per instruction: WebShop's formula (Yao et al. 2022, web_agent_site/engine/goal.py),
    r = r_type * (n_attr_matched + n_option_matched + [price <= budget]) / (n_attrs + n_options + 1)
simplified in two places, so it is deterministic and needs neither spaCy nor rapidfuzz:
  * a fuzzy match (WebShop: token_set_ratio > 85) is equality of normalised text or of its word set;
    an attribute also matches when it occurs in the title, features or description, as in WebShop;
  * the title score (WebShop: overlap of spaCy nouns) is the overlap of content words between the
    bought product's title and the target's title; r_type keeps WebShop's thresholds (1 when the
    product type or category matches or title score > 0.2; else 0.5; 0.1 below 0.1; 0 at 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mem1_core.data.shop_catalog import Catalog, Product, ShopGoal, goals_from_task, normalize_text
from mem1_core.data.types import Task
from mem1_core.envs.base import StepResult
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar, format_info, parse_turn
from mem1_core.retrieval.bm25 import BM25Backend

ACTION_RE = re.compile(r"^\s*(search|click)\s*\[(.*)\]\s*$", re.S | re.I)
BACK_TO_SEARCH = "back to search"
NEXT_PAGE = "next >"
PREV_PAGE = "< prev"
BUY_NOW = "buy now"
MAX_RESULTS = 50  # WebShop returns the top 50 matches, paged
MAX_QUERY_CHARS = 200
MAX_FEATURE_CHARS = 240
_STOPWORDS = frozenset(
    {"a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "by", "from", "at", "or", "is", "are"}
    | {"set", "pack", "piece", "pcs", "women", "men", "mens", "womens"}
)


def default_max_turns(n_instructions: int) -> int:
    """Turn budget: search, click, up to two options, buy, plus slack for paging or a retry."""
    return 7 * n_instructions + 2


# ---------------------------------------------------------------------------------------------------
# Reward


@dataclass(frozen=True)
class RewardParts:
    reward: float
    r_type: float
    attr_matches: int
    option_matches: int
    price_ok: bool
    title_score: float


def _fuzzy_equal(a: str, b: str) -> bool:
    na, nb = normalize_text(a), normalize_text(b)
    return bool(na) and (na == nb or set(na.split()) == set(nb.split()))


def _content_words(s: str) -> set[str]:
    return {w for w in normalize_text(s).split() if w not in _STOPWORDS and not w.isdigit() and len(w) > 1}


def title_score(bought_title: str, goal_title: str) -> float:
    goal_words = _content_words(goal_title)
    if not goal_words:
        return 0.2  # WebShop's value when the goal title has no nouns
    return len(_content_words(bought_title) & goal_words) / len(goal_words)


def type_reward(product: Product, goal: ShopGoal) -> tuple[float, float]:
    """(r_type, title_score), with WebShop's thresholds."""
    query_match = bool(goal.query) and normalize_text(product.query) == normalize_text(goal.query)
    bought_cats = {c.strip() for c in product.product_category.split("›") if c.strip()}
    goal_cats = {c.strip() for c in goal.product_category.split("›") if c.strip()}
    category_match = len(bought_cats & goal_cats) >= 2
    score = title_score(product.title, goal.name)
    r_type = 1.0
    if not (query_match or category_match or score > 0.2):
        r_type = 0.5
    if score < 0.1:
        r_type = 0.1
    if score == 0.0:
        r_type = 0.0
    return r_type, score


def attribute_matches(product: Product, goal: ShopGoal) -> int:
    text = normalize_text(" ".join([product.title, " ".join(product.bullet_points), product.description]))
    padded = f" {text} "
    n = 0
    for g in goal.attributes:
        if any(_fuzzy_equal(p, g) for p in product.attributes) or f" {normalize_text(g)} " in padded:
            n += 1
    return n


def option_matches(selected: dict[str, str], goal: ShopGoal) -> int:
    chosen = list(selected.values())
    return sum(1 for g in goal.options if any(_fuzzy_equal(c, g) for c in chosen))


def shop_reward(product: Product, selected: dict[str, str], goal: ShopGoal) -> RewardParts:
    """WebShop's purchase reward for buying `product` with `selected` options against `goal`."""
    r_type, score = type_reward(product, goal)
    n_attr = attribute_matches(product, goal)
    n_opt = option_matches(selected, goal)
    price_ok = product.price <= goal.price_upper
    total = (n_attr + n_opt + int(price_ok)) / (len(goal.attributes) + len(goal.options) + 1)
    return RewardParts(round(total * r_type, 6), r_type, n_attr, n_opt, price_ok, score)


# ---------------------------------------------------------------------------------------------------
# Prompt and pages


def shop_prompt(instructions: list[str], max_turns: int, grammar: TagGrammar = DEFAULT_GRAMMAR) -> str:
    """The task prompt: N instructions bought in order, in the MEM1 grammar."""
    g = grammar
    n = len(instructions)
    listed = "; ".join(f"({i}) {s.strip()}" for i, s in enumerate(instructions, start=1))
    return (
        f"Buy {n} item{'s' if n > 1 else ''} in a web shop, one per instruction, in order: {listed}\n"
        f"Each turn, first write {g.open(g.state)}…{g.close(g.state)}: a cumulative summary of everything "
        f"you still need, your persistent memory; older turns are erased. Then one action in "
        f"{g.open(g.action)}…{g.close(g.action)}: search[keywords] on the search page, or click[…] on a "
        f"product id, an option or a button ({BUY_NOW}, {NEXT_PAGE}, {PREV_PAGE}, {BACK_TO_SEARCH}). "
        f"Buying completes the current instruction. Pages arrive in {g.open(g.info)}…{g.close(g.info)}. "
        f"You have {max_turns} turns. You are on the search page.\n"
    )


def searchable(catalog: Catalog) -> Catalog:
    """`catalog`, given in-process BM25 over its products on first search when it has no backend."""
    if catalog.backend is None:
        catalog.use_backend(BM25Backend(catalog.documents()))
    return catalog


def _price(p: float) -> str:
    return f"${p:.2f}"


@dataclass
class Purchase:
    asin: str
    options: dict[str, str]
    reward: float
    parts: RewardParts

    def to_dict(self) -> dict[str, Any]:
        return {"asin": self.asin, "options": dict(self.options), "reward": self.reward}


@dataclass
class _State:
    page: str = "search"  # search | results | item
    query: str = ""
    hits: list[Product] = field(default_factory=list)
    page_no: int = 0
    item: Product | None = None
    selected: dict[str, str] = field(default_factory=dict)


class ShopEnvironment:
    """One episode of one shop task (implements envs.base.Environment)."""

    def __init__(
        self,
        task: Task,
        catalog: Catalog,
        grammar: TagGrammar = DEFAULT_GRAMMAR,
        max_turns: int | None = None,
        page_size: int = 5,
    ):
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.task = task
        self.catalog = catalog
        self.grammar = grammar
        self.goals = goals_from_task(task)
        self.max_turns = max_turns if max_turns is not None else default_max_turns(len(self.goals))
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        self.page_size = page_size
        self.reset()

    @property
    def stop_strings(self) -> list[str]:
        return [self.grammar.close(self.grammar.action)]

    def reset(self) -> str:
        self._state = _State()
        self._purchases: list[Purchase] = []
        self._turn = 0
        self._done = False
        return shop_prompt([g.instruction for g in self.goals], self.max_turns, self.grammar)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def purchases(self) -> list[Purchase]:
        return list(self._purchases)

    # -- the step ------------------------------------------------------------------------------------

    def step(self, generation: str) -> StepResult:
        if self._done:
            raise RuntimeError(f"task {self.task.id}: step() after the episode ended")
        self._turn += 1
        parsed = parse_turn(generation, self.grammar)
        if not parsed.ok:
            return self._finish(format_error=parsed.action.reason)  # type: ignore[union-attr]
        action = parsed.action
        if action.kind != "action":  # type: ignore[union-attr]
            g = self.grammar
            return self._finish(format_error=f"<{action.kind}> is not a shop action; use {g.open(g.action)}")  # type: ignore[union-attr]
        body = self._act(action.content)  # type: ignore[union-attr]
        if len(self._purchases) == len(self.goals):
            return self._finish()
        if self._turn >= self.max_turns:
            return self._finish(truncated=True)
        left = self.max_turns - self._turn
        return StepResult(
            format_info(f"{body}\n[{left} turn{'s' if left != 1 else ''} left]", self.grammar), False
        )

    def _act(self, content: str) -> str:
        m = ACTION_RE.match(content)
        if m is None:
            return self._invalid(f"'{content[:80]}' is not search[...] or click[...]")
        verb, arg = m.group(1).lower(), " ".join(m.group(2).split())
        if verb == "search":
            return self._search(arg)
        return self._click(arg)

    def _invalid(self, reason: str) -> str:
        return f"Invalid action: {reason}.\n{self._render()}"

    def _search(self, query: str) -> str:
        s = self._state
        if s.page != "search":
            return self._invalid(f"there is no search box on this page; click[{BACK_TO_SEARCH}] first")
        if not normalize_text(query):
            return self._invalid("empty search")
        s.query = query[:MAX_QUERY_CHARS]
        s.hits = searchable(self.catalog).search(s.query, MAX_RESULTS)
        s.page, s.page_no, s.item, s.selected = "results", 0, None, {}
        return self._render()

    def _click(self, arg: str) -> str:
        s = self._state
        target = arg.replace("‹", "<").replace("›", ">").strip().strip("[]").strip()
        key = target.lower()
        if key == BACK_TO_SEARCH:
            if s.page == "search":
                return self._invalid("already on the search page")
            self._state = _State()
            return self._render()
        if s.page == "search":
            return self._invalid("nothing to click on the search page; use search[keywords]")
        if s.page == "results":
            return self._click_results(key, target)
        return self._click_item(key, target)

    def _click_results(self, key: str, target: str) -> str:
        s = self._state
        n_pages = self._n_pages()
        if key == NEXT_PAGE:
            if s.page_no + 1 >= n_pages:
                return self._invalid("this is the last page")
            s.page_no += 1
            return self._render()
        if key == PREV_PAGE:
            if s.page_no == 0:
                return self._invalid("this is the first page")
            s.page_no -= 1
            return self._render()
        norm = normalize_text(target)
        for p in self._page_hits():
            if key == p.asin.lower() or (norm and norm == normalize_text(p.title)):
                s.page, s.item, s.selected = "item", p, {}
                return self._render()
        return self._invalid(f"'{target[:80]}' is not a product or button on this page")

    def _click_item(self, key: str, target: str) -> str:
        s = self._state
        assert s.item is not None
        if key == BUY_NOW:
            return self._buy()
        if key == PREV_PAGE:
            s.page, s.item, s.selected = "results", None, {}
            return self._render()
        norm = normalize_text(target)
        for name, values in s.item.options.items():
            for v in values:
                if norm and normalize_text(v) == norm:
                    s.selected[name] = v
                    return self._render()
        return self._invalid(f"'{target[:80]}' is not an option or button on this page")

    def _buy(self) -> str:
        s = self._state
        assert s.item is not None
        goal = self.goals[len(self._purchases)]
        parts = shop_reward(s.item, s.selected, goal)
        self._purchases.append(Purchase(s.item.asin, dict(s.selected), parts.reward, parts))
        chosen = ", ".join(f"{k}={v}" for k, v in s.selected.items()) or "no options"
        done, n = len(self._purchases), len(self.goals)
        self._state = _State()
        return f"Bought [{s.item.asin}] ({chosen}) for instruction {done} of {n}.\n{self._render()}"

    # -- pages ---------------------------------------------------------------------------------------

    def _n_pages(self) -> int:
        return max(1, -(-len(self._state.hits) // self.page_size))

    def _page_hits(self) -> list[Product]:
        start = self._state.page_no * self.page_size
        return self._state.hits[start : start + self.page_size]

    def _render(self) -> str:
        s = self._state
        if s.page == "search":
            return (
                f"Search page. Bought {len(self._purchases)} of {len(self.goals)}. Actions: search[keywords]"
            )
        if s.page == "results":
            if not s.hits:
                return f'Results for "{s.query}": none.\nActions: click[{BACK_TO_SEARCH}]'
            lines = [f'Results for "{s.query}" (page {s.page_no + 1} of {self._n_pages()}):']
            lines += [f"[{p.asin}] {p.title} | {_price(p.price)}" for p in self._page_hits()]
            buttons = [BACK_TO_SEARCH] + ([PREV_PAGE] if s.page_no > 0 else [])
            buttons += [NEXT_PAGE] if s.page_no + 1 < self._n_pages() else []
            lines.append("Actions: click[product id], " + ", ".join(f"click[{b}]" for b in buttons))
            return "\n".join(lines)
        p = s.item
        assert p is not None
        lines = [f"Item [{p.asin}] {p.title} | {_price(p.price)}"]
        features = "; ".join(p.bullet_points or p.attributes)
        if features:
            lines.append(f"Features: {features[:MAX_FEATURE_CHARS]}")
        lines += [f"{name}: " + " | ".join(values) for name, values in p.options.items() if values]
        if s.selected:
            lines.append("Selected: " + ", ".join(f"{k}={v}" for k, v in s.selected.items()))
        option_hint = "click[option], " if p.options else ""
        lines.append(f"Actions: {option_hint}click[{BUY_NOW}], click[{PREV_PAGE}], click[{BACK_TO_SEARCH}]")
        return "\n".join(lines)

    # -- the end -------------------------------------------------------------------------------------

    def _finish(self, format_error: str | None = None, truncated: bool = False) -> StepResult:
        self._done = True
        n = len(self.goals)
        scores = [p.reward for p in self._purchases] + [0.0] * (n - len(self._purchases))
        if format_error is not None:
            scores = [0.0] * n
        reward = sum(scores) / n
        info: dict[str, Any] = {
            "em": sum(1.0 for s in scores if s >= 1.0) / n,  # WebShop's success rate
            "f1": reward,  # WebShop's score: partial credit
            "scores": scores,
            "predictions": [p.asin for p in self._purchases] + [""] * (n - len(self._purchases)),
            "purchases": [p.to_dict() for p in self._purchases],
            "turns": self._turn,
            "truncated": truncated,
        }
        return StepResult("", True, reward=reward, format_error=format_error, info=info)


def make_shop_env_factory(
    catalog: Catalog,
    grammar: TagGrammar = DEFAULT_GRAMMAR,
    page_size: int = 5,
    max_turns: Callable[[int], int] | int | None = None,
) -> Callable[[Task], ShopEnvironment]:
    """The env_factory that agent.rollout.run_episodes takes: one environment per shop task.

    `max_turns` is a fixed budget, a function of the number of instructions, or None for
    `default_max_turns` (shop tasks need ~5 turns per instruction, more than QA's 2 * N + 2).
    """

    def factory(task: Task) -> ShopEnvironment:
        n = task.n_objectives
        turns = max_turns(n) if callable(max_turns) else max_turns
        return ShopEnvironment(task, catalog, grammar=grammar, max_turns=turns, page_size=page_size)

    return factory
