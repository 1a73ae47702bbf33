"""The shop domain through the shared steps: compose -> SFT -> evaluate (and the pipeline), no trainer fork.

What is shown: compose writes shop tasks, products.jsonl and manifest "domain"; the pipeline's domain
reaches compose; the oracle scores reward 1.0 through the same evaluate.run as QA; a tiny model after
SFT on shop oracle trajectories beats an untrained model, with a uniformly random valid-action policy
measured beside it (at this 64-task size SFT only ties it; at 2,048 tasks it beats it:
bench/bench_shop_learning.py); and the whole pipeline runs under
kfp.local with domain shop. (Flat peak tokens in mem1 mode as instructions grow: bench/bench_shop.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mem1_core.agent.shop_random import RandomShopPolicy
from mem1_core.config import (
    AgentConfig,
    ComposeConfig,
    EvalConfig,
    PipelineConfig,
    SFTConfig,
    ShopComposeConfig,
    TinyModelConfig,
)
from mem1_core.data import compose
from mem1_core.envs import domains

REPO = Path(__file__).resolve().parents[1]


def shop_compose(**over: object) -> ComposeConfig:
    base = dict(
        domain="shop",
        shop=ShopComposeConfig(n_products=60),
        train_objectives=[1],
        eval_objectives=[1, 2],
        n_train_tasks=64,
        n_eval_tasks=8,
    )
    return ComposeConfig.model_validate({**base, **over})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop-data")
    compose.run(shop_compose(), out)
    return out


def test_compose_writes_shop_tasks_catalogue_and_domain(data_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["domain"] == "shop" and domains.domain_of(data_dir) == "shop"
    assert set(manifest["files"]) == {"train.parquet", "eval.parquet", "corpus.jsonl", "products.jsonl"}
    assert manifest["counts"]["documents"] == 60 == len(domains.load_shop_catalog(data_dir))
    train, evals = compose.load_tasks(data_dir, "train"), compose.load_tasks(data_dir, "eval")
    assert len(train) == 64 and len(evals) == 16 and all(t.domain == "shop" for t in train + evals)
    # eval instructions target products never bought in training
    assert not {o.answers[0] for t in train for o in t.objectives} & {
        o.answers[0] for t in evals for o in t.objectives
    }
    again = compose.run(shop_compose(), tmp_path / "again")
    assert again.dataset_hash == manifest["dataset_hash"]  # deterministic in the seeds
    qa = compose.run(ComposeConfig(n_train_tasks=4, n_eval_tasks=2, eval_objectives=[1]), tmp_path / "qa")
    assert qa.manifest["domain"] == "qa" and domains.domain_of(tmp_path / "qa") == "qa"
    assert not (tmp_path / "qa" / "products.jsonl").exists()


def test_compose_reads_real_webshop_files(tmp_path: Path) -> None:
    from mem1_core.data.shop_catalog import build_catalog

    catalog = build_catalog(seed=3, n_products=30)
    products = tmp_path / "items_shuffle.json"
    products.write_text(json.dumps([p.to_record() for p in catalog.products]))
    goals = tmp_path / "goals.jsonl"
    goals.write_text(
        "".join(
            json.dumps({"asin": p.asin, "instruction": f"i want a {p.query}", "instruction_attributes": []})
            + "\n"
            for p in catalog.products
        )
    )
    shop = ShopComposeConfig(products_path=str(products), goals_path=str(goals))
    result = compose.run(shop_compose(shop=shop, n_train_tasks=6, n_eval_tasks=2), tmp_path / "d")
    assert result.manifest["counts"]["questions"] == 30 and result.n_documents == 30
    assert "i want a" in compose.load_tasks(tmp_path / "d", "eval")[0].questions[0]
    with pytest.raises(ValueError, match=r"goals_path needs shop\.products_path"):
        ShopComposeConfig(goals_path=str(goals))


def test_pipeline_domain_reaches_compose() -> None:
    from components import step_config

    plain = json.dumps(PipelineConfig().model_dump(mode="json"))
    for cfg in (
        step_config.merge_config(plain, domain="shop"),
        step_config.merge_config(plain, overrides={"domain": "shop"}),
        PipelineConfig(domain="shop"),
    ):
        assert (
            cfg.domain == "shop" and json.loads(step_config.section_json(cfg, "compose"))["domain"] == "shop"
        )
    assert step_config.merge_config(plain).compose.domain == "qa"
    with pytest.raises(ValueError, match="disagree"):
        PipelineConfig.model_validate({"domain": "qa", "compose": {"domain": "shop"}})
    from mem1_core.config import load_config

    preset = load_config(REPO / "configs" / "local-shop.yaml")
    assert preset.domain == "shop" and preset.compose.domain == "shop"


def test_default_turns_per_domain() -> None:
    agent = AgentConfig()
    assert [domains.default_turns("qa", n) for n in (1, 4)] == [4, 10]
    assert [domains.default_turns("shop", n) for n in (1, 4)] == [9, 30]
    assert domains.turns_for("shop", agent.model_copy(update={"max_turns": 5}), 4) == 5
    with pytest.raises(ValueError, match="unknown domain"):
        domains.default_turns("chess", 1)


def test_oracle_reaches_reward_one_through_evaluate(data_dir: Path, tmp_path: Path) -> None:
    from mem1_core.eval import evaluate

    cfg = EvalConfig(
        agent=AgentConfig(temperature=0.0, max_new_tokens=160),
        objectives=[1, 2],
        modes=["mem1", "full"],
        n_tasks_per_objective=4,
    )
    result = evaluate.run(cfg, data_dir, "oracle", tmp_path / "eval")
    assert len(result.rows) == 4
    for row in result.rows:
        assert row["reward"] == 1.0 and row["success_rate"] == 1.0 and row["em"] == 1.0, row
        assert row["format_error"] == 0.0
    mem1, full = result.row(2, "mem1"), result.row(2, "full")
    assert mem1 is not None and full is not None and mem1["peak_tokens"] < full["peak_tokens"]
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "success rate" in table and "reward (mean)" in table
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["domain"] == "shop"
    pngs = sorted(p.name for p in (tmp_path / "eval").glob("*.png"))
    assert pngs == [
        "peak_tokens_vs_instructions.png",
        "reward_vs_instructions.png",
        "success_vs_instructions.png",
    ]  # reward and success, not EM (exact-target purchases) against "objectives"


# ---------------------------------------------------------------------------------------------------
# A tiny model after SFT against two floors


@pytest.mark.slow
def test_sft_tiny_model_beats_untrained_and_random(data_dir: Path, tmp_path: Path) -> None:
    """3-5 min on 2 shared CPU cores. Reward on 8 held-out 1-instruction tasks, mem1 mode, greedy."""
    import torch

    from mem1_core import models
    from mem1_core.agent.rollout import run_episodes
    from mem1_core.eval import evaluate
    from mem1_core.eval.metrics import summarize
    from mem1_core.rl import sft

    torch.set_num_threads(1)
    agent = AgentConfig(max_new_tokens=128, temperature=0.0)
    tiny = TinyModelConfig(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=192, vocab_size=1024,
    )  # fmt: skip
    cfg = SFTConfig(
        model={"base_model": "tiny", "tiny": tiny}, agent=agent, epochs=8, learning_rate=3e-3, batch_size=8
    )
    model_dir = sft.run(cfg, data_dir, tmp_path / "sft")
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    # the shop teacher that does not know the target (not the QA one, not the evaluation oracle)
    assert summary["teacher_mean_reward"] > 0.8

    # the floors: the same architecture and tokenizer untrained, and a random valid-action policy
    _, tokenizer = models.load_model(model_dir, cfg.model)
    untrained = models.build_tiny_model(tiny, tokenizer, seed=1)
    untrained_dir = models.save_model(untrained, tokenizer, tmp_path / "untrained")
    ecfg = EvalConfig(agent=agent, objectives=[1], modes=["mem1"], n_tasks_per_objective=8)
    after = evaluate.run(ecfg, data_dir, model_dir, tmp_path / "eval-sft").rows[0]
    before = evaluate.run(ecfg, data_dir, untrained_dir, tmp_path / "eval-untrained").rows[0]
    tasks = [t for t in compose.load_tasks(data_dir, "eval") if t.n_objectives == 1][:8]
    factory = domains.env_factory_for("shop", data_dir, agent)
    rand = [summarize(run_episodes(tasks, factory, RandomShopPolicy(tokenizer, s), agent, progress=False))
            for s in range(5)]  # fmt: skip
    random_reward = sum(r["reward"] for r in rand) / len(rand)
    print(
        f"shop 1-instruction reward: sft {after['reward']:.3f} (success {after['success_rate']:.3f}, "
        f"format errors {after['format_error']:.2f}); untrained {before['reward']:.3f}; "
        f"random valid actions {random_reward:.3f} (mean of 5 seeds)"
    )
    assert after["format_error"] < 0.5 and before["format_error"] == 1.0
    assert after["reward"] > before["reward"] + 0.05
    # The random floor is a real policy: valid actions only, partial WebShop credit for what it buys.
    assert all(r["format_error"] == 0.0 for r in rand) and random_reward > 0.0
    # Measured (seed 0, 2 CPU cores): sft 0.131, untrained 0.000, random valid actions 0.156. At this
    # size SFT learns the format and the search -> click -> buy routine but does not yet pick better
    # products than chance (success rate 0 for both). It did not when it imitated a teacher that knew
    # the gold product id either (0.156); it now imitates one that acts on the page (reward ~0.94).
    # Not asserted here: it does not hold at 64 tasks. bench/bench_shop_learning.py asserts it with
    # 2,048 training tasks (a paired permutation test on 32 held-out tasks).


@pytest.mark.slow
def test_whole_pipeline_locally_with_domain_shop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The QA smallest-settings config with `--set domain=shop`: every step runs the shop domain."""
    from mlflow.tracking import MlflowClient
    from test_pipeline_local import CONFIG

    from mem1_core.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs"
    shop_sets = ["domain=shop", "compose.shop.n_products=20", "sft.agent.max_new_tokens=160"]
    shop_sets += ["sft.max_seq_len=1024", "register.model_name=mem1-shop-e2e"]
    args = ["pipeline", "local", "--config", str(CONFIG), "--run-dir", str(run_dir)]
    rc = main(args + [x for s in shop_sets for x in ("--set", s)])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "registered: models:/mem1-shop-e2e/1" in out

    uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("mem1-e2e")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["compose"].data.params["domain"] == "shop"
    assert runs["sft"].data.metrics["sft/data_teacher_mean_reward"] > 0  # the shop oracle's data
    assert any(k.startswith("success_rate.n1.mem1") for k in runs["eval"].data.metrics)
    manifests = [p for p in (run_dir / "kfp").rglob("manifest.json") if p.parent.name == "dataset"]
    assert manifests and all(json.loads(p.read_text())["domain"] == "shop" for p in manifests)


@pytest.mark.parametrize("reward", ["f1", "grounded"])
def test_qa_only_rewards_are_refused_on_shop_data(data_dir: Path, tmp_path: Path, reward: str) -> None:
    from mem1_core.config import ConfigError, PPOConfig
    from mem1_core.rl import ppo

    # Refused from the data set's domain alone, before any model is read (none exists here).
    with pytest.raises(ConfigError, match=f"'{reward}' scores QA answers"):
        ppo.PPOTrainer(PPOConfig(reward=reward, prompts_per_step=4), data_dir, tmp_path / "none", tmp_path)
