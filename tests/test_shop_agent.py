"""The shop oracle through the shared rollout: reward 1.0 in every memory mode, and MEM1's flat memory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mem1_core.agent.rollout import run_episodes
from mem1_core.agent.shop_oracle import ShopOracleTeacher
from mem1_core.config import AgentConfig
from mem1_core.data.shop_catalog import (
    Catalog,
    build_catalog,
    load_catalog,
    load_goals,
    make_goals,
    make_shop_tasks,
    shop_task,
)
from mem1_core.envs.shop import ShopEnvironment, make_shop_env_factory, shop_prompt
from mem1_core.models import train_tokenizer
from mem1_core.protocol.tags import parse_turn

AGENT = AgentConfig(temperature=0.0, max_new_tokens=96)  # oracle turns fit well under the default


def shop_tokenizer(catalog: Catalog, instructions: list[str]) -> object:
    """A small BPE trained on what the shop shows: product texts, instructions and a prompt."""
    texts = [d.contents for d in catalog.documents()] + instructions + [shop_prompt(instructions[:3], 10)]
    return train_tokenizer(texts, vocab_size=2048)  # TinyModelConfig default


@pytest.fixture(scope="module")
def world() -> tuple[Catalog, list, object]:
    catalog = build_catalog(seed=7, n_products=240)
    goals = make_goals(catalog, 60, seed=7)
    return catalog, goals, shop_tokenizer(catalog, [g.instruction for g in goals])


@pytest.mark.parametrize("mode", ["mem1", "full", "truncate:1"])
def test_oracle_reaches_reward_one_through_the_rollout(world: tuple, mode: str) -> None:
    catalog, goals, tokenizer = world
    tasks = [t for n in (1, 2, 3, 4) for t in make_shop_tasks(goals, n, 3, seed=n, prefix=f"shop-{mode}")]
    oracle = ShopOracleTeacher(tokenizer)
    trajs = run_episodes(tasks, make_shop_env_factory(catalog), oracle, AGENT, mode=mode, progress=False)
    assert len(trajs) == len(tasks)
    for task, traj in zip(tasks, trajs, strict=True):
        assert traj.done and traj.format_error is None and traj.reward == 1.0, (
            task.id,
            traj.turns[-1].output_text,
        )
        assert traj.predictions == [o.answers[0] for o in task.objectives]
        for turn in traj.turns:
            parsed = parse_turn(turn.output_text)
            assert parsed.ok and parsed.state and parsed.action.kind == "action"
            assert tokenizer.decode(turn.output_ids) == turn.output_text  # ids are what was written


def test_oracle_recovers_when_the_first_search_misses(world: tuple) -> None:
    catalog, goals, tokenizer = world
    goal = goals[0]
    oracle = ShopOracleTeacher(tokenizer)
    env = ShopEnvironment(shop_task("miss", [goal]), catalog, page_size=1, max_turns=20)
    prompt = env.reset()
    first = oracle.turn_text(prompt, [goal])
    assert f"search[{' '.join([*goal.attributes, goal.query])}]" in first and "Tries 1." in first
    # the search goes wrong (another product's title): the oracle must page, go back and search again
    other = next(p for p in catalog.products if p.query != goal.query)
    turn = first.replace(first[first.index("<action>") :], f"<action>search[{other.title}]</action>")
    result = env.step(turn)
    assert f"[{other.asin}]" in result.observation and f"[{goal.asin}]" not in result.observation
    actions = []
    while not result.done:
        turn = oracle.turn_text(prompt + turn + result.observation, [goal])  # the MEM1 context
        actions.append(turn[turn.index("<action>") :])
        result = env.step(turn)
    assert actions[:3] == ["<action>click[next >]</action>"] * 2 + ["<action>click[back to search]</action>"]
    assert (
        actions[3] == f"<action>search[{goal.name}]</action>"
        and actions[4] == f"<action>click[{goal.asin}]</action>"
    )
    assert result.reward == 1.0


def test_oracle_leaves_a_wrong_product_page(world: tuple) -> None:
    catalog, goals, tokenizer = world
    goal = goals[0]
    other = next(p for p in catalog.products if p.asin != goal.asin)
    env = ShopEnvironment(shop_task("wrong", [goal]), catalog)
    prompt = env.reset()
    first = ShopOracleTeacher(tokenizer).turn_text(prompt, [goal])
    env.step(f"<IS>x</IS><action>search[{other.title}]</action>")
    page = env.step(f"<IS>x</IS><action>click[{other.asin}]</action>").observation
    assert "click[< prev]" in ShopOracleTeacher(tokenizer).turn_text(prompt + first + page, [goal])


def test_mem1_memory_stays_flat_while_full_context_grows(world: tuple) -> None:
    catalog, goals, tokenizer = world
    oracle = ShopOracleTeacher(tokenizer)
    factory = make_shop_env_factory(catalog)
    peaks: dict[str, dict[int, float]] = {"mem1": {}, "full": {}}
    beyond_prompt: dict[int, float] = {}
    for n in (1, 2, 4, 8):
        tasks = make_shop_tasks(goals, n, 2, seed=100 + n)
        for mode in peaks:
            trajs = run_episodes(tasks, factory, oracle, AGENT, mode=mode, progress=False)
            assert all(t.reward == 1.0 for t in trajs)
            peaks[mode][n] = sum(t.peak_tokens for t in trajs) / len(trajs)
            if mode == "mem1":
                beyond_prompt[n] = max(t.peak_tokens - t.prompt_len for t in trajs)
    # MEM1: what the agent keeps besides the prompt does not grow with the number of instructions
    assert max(beyond_prompt.values()) <= 1.25 * min(beyond_prompt.values()), beyond_prompt
    assert peaks["mem1"][8] < 2.0 * peaks["mem1"][1], peaks
    # full context grows with every turn: 8 instructions need well over 4x the memory of one
    assert peaks["full"][8] > 4.0 * peaks["full"][1], peaks
    assert all(peaks["full"][n] > peaks["mem1"][n] for n in (1, 2, 4, 8))


@pytest.mark.realdata
def test_oracle_buys_real_webshop_goals(shared_data: Path) -> None:
    catalog = load_catalog(shared_data / "webshop" / "products_100.jsonl")
    goals = load_goals(shared_data / "webshop" / "goals_for_products_100.jsonl", catalog)
    tokenizer = shop_tokenizer(catalog, [g.instruction for g in goals])
    tasks = make_shop_tasks(goals, 2, 8, seed=0, prefix="webshop")
    trajs = run_episodes(
        tasks,
        make_shop_env_factory(catalog),
        ShopOracleTeacher(tokenizer),
        AGENT,
        mode="mem1",
        progress=False,
    )
    assert [t.reward for t in trajs] == [1.0] * len(tasks)


def test_sft_teacher_acts_only_on_what_it_sees(world: tuple) -> None:
    """knows_target=False: never names the gold product, clicks only listed ids, still scores high."""
    catalog, goals, tokenizer = world
    tasks = [t for n in (1, 2) for t in make_shop_tasks(goals, n, 6, seed=10 + n, prefix="visible")]
    teacher = ShopOracleTeacher(tokenizer, knows_target=False)
    trajs = run_episodes(tasks, make_shop_env_factory(catalog), teacher, AGENT, mode="mem1", progress=False)
    for task, traj in zip(tasks, trajs, strict=True):
        assert traj.done and traj.format_error is None, traj.turns[-1].output_text
        targets = {o.answers[0] for o in task.objectives}
        shown = ""
        for turn in traj.turns:
            assert not any(f"[{a}]" in parse_turn(turn.output_text).state for a in targets)
            clicked = re.findall(r"click\[(S\d+)\]", turn.output_text)
            assert all(f"[{c}]" in shown for c in clicked)  # only ids the last page listed
            shown = turn.observation
    reward = sum(t.reward for t in trajs) / len(trajs)
    assert reward > 0.8, reward  # measured 0.93-0.95 on the bench's catalogue (bench/results/shop.md)


def test_best_result_prefers_matching_titles_within_budget(world: tuple) -> None:
    _, goals, tokenizer = world
    goal = goals[0]
    match = f"Brand {' '.join(goal.attributes)} {goal.query}".title()
    page = (
        f'Results for "x" (page 1 of 1):\n[S1] Plain Thing | $1.00\n'
        f"[S2] {match} | ${goal.price_upper + 50:.2f}\n[S3] {match} | ${goal.price_upper - 0.5:.2f}\n"
    )
    best = ShopOracleTeacher(tokenizer, knows_target=False).best_result(page, goal)
    assert best is not None and best[0] == "S3"
