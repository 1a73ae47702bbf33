"""The learning bench's own parts: its significance test, its slot labels, and its failing path."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from bench.bar import BarMissed
from bench.bench_learning import SLOTS, _slot, default_cache, episode_stages, main
from bench.stats import fisher_greater, paired_greater
from mem1_core.config import AgentConfig, ComposeConfig, WorldConfig
from mem1_core.data import compose
from mem1_core.envs.qa import tokenizer_texts
from mem1_core.models import train_tokenizer
from mem1_core.protocol.tags import DEFAULT_GRAMMAR as G
from mem1_core.rl import sft


def test_fisher_greater_matches_the_hypergeometric_tail() -> None:
    # 5 of 64 right against 0 of 64: the only table at least as extreme puts all 5 in the first group.
    assert fisher_greater(5, 64, 0, 64) == pytest.approx(math.comb(64, 5) / math.comb(128, 5))
    assert fisher_greater(0, 64, 0, 64) == pytest.approx(1.0)
    assert fisher_greater(3, 10, 3, 10) > 0.5  # equal groups are not evidence
    assert fisher_greater(10, 20, 2, 20) < 0.01


def test_sft_cache_lives_outside_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # hours of SFT must survive `git clean` and a fresh clone: the default is the user's cache dir
    monkeypatch.delenv("MEM1_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "xdg" / "mem1-pipelines" / "bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache() == tmp_path / "home" / ".cache" / "mem1-pipelines" / "bench"
    monkeypatch.setenv("MEM1_BENCH_CACHE", str(tmp_path / "mine"))
    assert default_cache() == tmp_path / "mine"


def test_paired_greater_exact_and_monte_carlo() -> None:
    # 4 pairs, all a > b: only the observed sign pattern is as large, p = 1/16
    assert paired_greater([1, 1, 1, 1], [0, 0, 0, 0]) == pytest.approx(1 / 16)
    assert paired_greater([0, 0, 0], [0, 0, 0]) == 1.0  # no difference is no evidence
    assert paired_greater([0, 0, 0, 0], [1, 1, 1, 1]) == 1.0
    # 40 pairs: Monte Carlo, close to the normal tail of the sign-flip sum
    a, b = [0.6] * 30 + [0.0] * 10, [0.4] * 30 + [0.2] * 10  # diffs +0.2 x30, -0.2 x10
    p = paired_greater(a, b)
    z = (30 - 10) / math.sqrt(40)  # sum of +-1 signs, sd sqrt(n)
    normal = 0.5 * math.erfc(z / math.sqrt(2))
    assert 0.3 * normal < p < 3 * normal and p < 0.01
    assert paired_greater(b, a) > 0.99
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_greater([1.0], [])


def test_slots_name_what_each_token_copies() -> None:
    turn = "<IS>Found: Paitum Labs | Q2: Who directed the film Blue Harbor? needs Blue Harbor</IS>"
    assert _slot("<IS>Found:", " Paitum", G) == "found"
    assert _slot("<IS>Found: Paitum Labs | Q2:", " Who", G) == "next_question"
    assert _slot("<IS>Q1: Who directed the film", " Blue", G) == "question"
    assert _slot(turn[: turn.index(" needs") + 6], " Blue", G) == "needs"
    assert _slot(turn + "<query>", " Blue", G) == "query"
    assert _slot("<IS>Found: a; b</IS><answer>", " a", G) == "answer"
    assert _slot("<IS>Found: a</IS>", "<query>", G) == "format"
    assert set(SLOTS) == {"question", "next_question", "needs", "found", "query", "answer", "format"}


@pytest.mark.slow
def test_bench_fails_and_still_writes_its_table_when_sft_is_not_above_untrained(tmp_path: Path) -> None:
    """A few SFT steps cannot beat chance: the bench must say so (raise) after writing the numbers, for
    every seed, model and estimator; a rerun takes the SFT models from the cache."""
    tiny = {
        "compose.world": {"seed": 0, "n_people": 40, "n_films": 12, "n_cities": 6, "n_companies": 6},
        "compose.n_train_tasks": 8,
        "compose.n_eval_tasks": 2,
        "compose.eval_objectives": [1, 2, 8],
        "compose.train_objectives": [1, 2],
        "compose.hops": [1],
        "sft.model.tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 512},
        "sft.epochs": 0.5,
        "sft.pretrain": {"steps": 2, "seq_len": 32, "batch_size": 2, "warmup_steps": 0},
        "ppo.steps": 1,
        "ppo.minibatch_size": 8,
        "ppo.checkpoint_every": 1,
        "ppo.eval_every": 1,
        "ppo.eval_tasks": 1,
        "ppo.eval_objectives": [2],
        "eval.agent.max_new_tokens": 24,
        "ppo.agent.max_new_tokens": 24,
    }  # fmt: skip
    recipes = {"gae": {"advantage": "gae", "group_size": 1, "prompts_per_step": 4},
               "grpo": {"advantage": "grpo", "group_size": 2, "prompts_per_step": 2}}  # fmt: skip
    cache = tmp_path / "cache"
    with pytest.raises(BarMissed, match="not clearly above the untrained model") as missed:
        main(tmp_path, overrides=tiny, seeds=(0, 1), cache=cache, recipes=recipes, arms=("mem1", "full"))
    results = missed.value.results
    assert results["learning_p_sft_above_untrained"] >= 0.05  # the numbers travel with it
    assert {"learning_grpo_s0_n2_em", "learning_grpo_s1_n2_em", "learning_gae_n8_em"} <= results.keys()
    table = (tmp_path / "learning.md").read_text(encoding="utf-8")
    for row in ("| untrained | 0 |", "| sft | 1 |", "| sft | mean |", "| gae | 0 |", "| grpo | mean |",
                "| sft-full | 1 |", "| grpo-full | mean |"):  # fmt: skip
        assert row in table, row
    # The full-context arm is trained and evaluated in its own mode, and compared with mem1 model by model.
    assert "grpo-full (trained and evaluated in mode full) vs grpo (mem1) at 8 objectives" in table
    assert results["learning_sft-full_n8_peak_tokens"] > 0 and results["learning_sft_n8_peak_tokens"] > 0
    assert (tmp_path / "learning_curve_grpo-full_s0.png").is_file()
    assert "| gae-full |" not in table and "learning_gae-full_n8_em" not in results  # the bar recipe alone
    assert "does NOT hold" in table and "Fisher exact" in table and "paired sign-flip" in table
    # Every mem1 model is scored again over redrawn documents; trained ones also by what sampling finds.
    assert "Reading, not recall" in table and "| grpo | 1 |" in table
    for key in ("untrained_s0_n1_counterfactual_em", "sft_s1_n2_counterfactual_recited",
                "grpo_s1_n2_headroom_improvable", "gae_s0_n2_headroom_failed"):  # fmt: skip
        assert 0.0 <= results[f"learning_{key}"] <= 4, key
    assert "learning_untrained_s0_n2_headroom_failed" not in results
    assert "seed 0 trained in this run" in table
    assert "causal-LM pre-training 2 steps x 2 windows of 32 tokens" in table
    assert results["learning_sft_pretrain_steps"] == 2
    assert (tmp_path / "learning_curve_grpo_s1.png").is_file()
    stage_rows = [line for line in table.splitlines() if line.startswith(("| model, objectives", "| sft, "))]
    assert len({row.count("|") for row in stage_rows}) == 1, "every stage row has the header's columns"
    # Each SFT model is named by its weights' sha256 and the machine that trained it.
    first = re.findall(r"seed (\d) trained in this run \(\d+ s to train on ([^;]+ thread\(s\), torch [^;]+); "
                       r"weights sha256 ([0-9a-f]{12})\)", table)  # fmt: skip
    assert [s for s, _, _ in first] == ["0", "1"], table
    # A rerun reuses both SFT models; different SFT settings would not.
    with pytest.raises(BarMissed) as missed_again:
        main(tmp_path, overrides=tiny, seeds=(0, 1), cache=cache, recipes=recipes, arms=("mem1", "full"))
    again = (tmp_path / "learning.md").read_text(encoding="utf-8")
    assert "seed 0 from the cache (" in again and f"weights sha256 {first[0][2]})" in again
    # RL models too: the rerun trains nothing and finds the same curves and times
    assert "gae seed 0 trained in this run" in table and "grpo seed 1 from the cache" in again
    assert "trained in this run" not in again
    assert len(list((cache / "rl").iterdir())) == 6  # 2 seeds x (mem1: 2 estimators, full: grpo alone)
    rerun = missed_again.value.results
    assert rerun["learning_seconds_grpo_s1"] == results["learning_seconds_grpo_s1"] > 0
    entries = list((cache / "sft").iterdir())
    assert len(entries) == 4  # 2 seeds x 2 memory modes
    # The teacher's turns are the same for both seeds and longer with the whole history in context.
    tokens = sorted(
        json.loads((e / "sft_summary.json").read_text(encoding="utf-8"))["tokens"] for e in entries
    )
    assert tokens[0] == tokens[1] < tokens[2] == tokens[3]


@pytest.mark.slow
def test_shop_bench_fails_and_still_writes_its_table_when_sft_is_not_above_random(tmp_path: Path) -> None:
    """Half an epoch on 8 tasks cannot beat random valid actions: the shop bench raises after writing.
    Seeds 1 and 2: the random policy runs with the first seed given, whichever that is."""
    from bench.bench_shop_learning import main as shop_main

    tiny = {
        "compose.shop": {"seed": 0, "n_products": 24, "eval_fraction": 0.2},
        "compose.n_train_tasks": 8,
        "compose.n_eval_tasks": 3,
        "compose.train_objectives": [1],
        "compose.eval_objectives": [1],
        "sft.model.tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 512},
        "sft.epochs": 0.5,
        "sft.agent.max_new_tokens": 96,
        "eval.agent.max_new_tokens": 24,
    }  # fmt: skip
    with pytest.raises(BarMissed, match="not clearly above random valid actions") as missed:
        shop_main(tmp_path, overrides=tiny, seeds=(1, 2))
    assert missed.value.results["shop_learning_p_sft_above_random"] >= 0.05
    table = (tmp_path / "shop_learning.md").read_text(encoding="utf-8")
    for row in (
        "| sft seed 1 |",
        "| sft seed 2 |",
        "| sft mean |",
        "| untrained mean |",
        "| random valid actions |",
    ):
        assert row in table
    assert {"shop_learning_sft_s1_reward", "shop_learning_sft_s2_reward", "shop_learning_sft_reward"} <= set(
        missed.value.results
    )
    pooled = missed.value.results["shop_learning_sft_reward"]
    per_seed = [missed.value.results[f"shop_learning_sft_s{s}_reward"] for s in (1, 2)]
    assert abs(pooled - sum(per_seed) / 2) < 1e-9  # the mean row is the mean of the seeds' rows
    assert "does NOT hold" in table and "permutation p =" in table


def test_episode_stages_are_all_one_for_the_oracle_and_catch_a_lost_answer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    world = WorldConfig(n_people=40, n_films=12, n_cities=6, n_companies=6)
    cfg = ComposeConfig(world=world, n_train_tasks=4, n_eval_tasks=3, eval_objectives=[2], hops=[1])
    compose.run(cfg, data)
    tasks, corpus = compose.load_tasks(data, "eval"), compose.load_corpus(data)
    tok = train_tokenizer(tokenizer_texts(tasks, corpus, G), 512, G)
    agent = AgentConfig(topk=1)
    trajs = sft.oracle_trajectories(tasks, sft.make_env_factory(corpus, agent), tok, agent)
    stages = episode_stages(tasks, trajs, G)
    assert list(stages) == [f"q{j} {s}" for j in (1, 2) for s in ("document retrieved", "answer in a state",
                                                                    "final answer right")]  # fmt: skip
    assert all(v == 1.0 for v in stages.values()), stages
    trajs[0].predictions = ["wrong", *trajs[0].predictions[1:]]
    assert episode_stages(tasks, trajs, G)["q1 final answer right"] == pytest.approx(2 / 3)
