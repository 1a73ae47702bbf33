"""PPO: behaviour log-probs equal the stitched pass (at the sampling temperature), the update's sign for
every advantage estimator, no critic where none is needed, exact resume, atomic checkpoints, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from rl_helpers import compose_small, untrained_tiny_model

from mem1_core.config import PPOConfig
from mem1_core.rl import checkpoint, ppo
from mem1_core.rl.trajectory import stitch

TIMING = ("update_tokens_per_s", "rollout_s", "rollout_tokens_per_s", "score_s", "step_s")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compose_small(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model with a tokenizer trained on the data (PPO mechanics, not learning)."""
    return untrained_tiny_model(data_dir, tmp_path_factory.mktemp("sft") / "model")


def small_ppo(**over) -> PPOConfig:
    base = {
        "steps": 3,
        "prompts_per_step": 4,
        "minibatch_size": 2,
        "checkpoint_every": 1,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "entropy_coef": 0.01,
        "kl_coef": 0.1,
        "group_size": 2,
        "agent": {"max_new_tokens": 12, "max_turns": 2},
    }
    return PPOConfig.model_validate({**base, **over})


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_equal_stitched_ones(
    data_dir: Path, model_dir: Path, tmp_path: Path, temperature: float
) -> None:
    """What HFPolicy sampled from (KV cache, left padding, logits / T) is what the stitched pass scores,
    so the PPO ratio is exactly 1 before the first update."""
    cfg = small_ppo(
        prompts_per_step=4, agent={"max_new_tokens": 12, "max_turns": 2, "temperature": temperature}
    )
    trainer = ppo.PPOTrainer(cfg, data_dir, model_dir, tmp_path)
    trajs, _ = trainer.rollout()
    seqs = [stitch(t) for t in trajs]
    scored = trainer.score(seqs)
    worst = 0.0
    for s in scored:
        assert s.seq.old_logprobs is not None
        behaviour = torch.tensor(s.seq.old_logprobs) * s.loss_mask
        worst = max(worst, float((behaviour - s.old_logprobs).abs().max()))
        assert float((s.old_logprobs - s.ref_logprobs).abs().max()) == 0.0  # actor == reference at start
    assert worst < 1e-4, f"behaviour vs stitched log-probs differ by {worst}"


@pytest.mark.parametrize("advantage", ["gae", "grpo", "rloo"])
def test_an_update_moves_probability_toward_rewarded_episodes(
    data_dir: Path, model_dir: Path, tmp_path: Path, advantage: str
) -> None:
    """The sign of the whole chain (reward -> advantages -> clipped loss -> step): the same sampled
    episodes, half of each group rewarded; after updates the rewarded ones gain log-probability."""
    cfg = small_ppo(
        prompts_per_step=4, minibatch_size=8, ppo_epochs=4, kl_coef=0.0, entropy_coef=0.0, advantage=advantage
    )
    trainer = ppo.PPOTrainer(cfg, data_dir, model_dir, tmp_path)
    trajs, _ = trainer.rollout()
    seqs = [stitch(t) for t in trajs if t.turns]
    for k, seq in enumerate(seqs):
        seq.reward = float(k % 2 == 0)

    def mean_logprob() -> list[float]:
        return [float((x.old_logprobs * x.loss_mask).sum() / x.loss_mask.sum()) for x in trainer.score(seqs)]

    before = mean_logprob()
    trainer.update(trainer.score(seqs))
    delta = [a - b for a, b in zip(mean_logprob(), before, strict=True)]
    up = [d for k, d in enumerate(delta) if k % 2 == 0]
    down = [d for k, d in enumerate(delta) if k % 2 == 1]
    assert min(up) > max(down), f"rewarded {up} vs unrewarded {down}"
    assert sum(up) / len(up) > 0 > sum(down) / len(down)


def _history(out: Path) -> list[dict[str, float]]:
    rows = json.loads((out / "metrics_history.json").read_text())
    return [{k: v for k, v in r.items() if k.split("/")[-1] not in TIMING} for r in rows]


def test_resume_continues_exactly(data_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    from mem1_core.models import load_model

    straight = tmp_path / "straight"
    ppo.run(small_ppo(steps=3), data_dir, model_dir, straight)

    resumed = tmp_path / "resumed"
    logged: list[int] = []
    ppo.run(small_ppo(steps=2), data_dir, model_dir, resumed, log=lambda m, s: logged.append(s))
    assert checkpoint.latest(resumed) == resumed / "checkpoints" / "step_2"
    # A crash while writing step 3 leaves only a .tmp dir: it must be ignored.
    (resumed / "checkpoints" / "step_3.tmp").mkdir()
    assert checkpoint.latest(resumed).name == "step_2"
    ppo.run(small_ppo(steps=3), data_dir, model_dir, resumed, log=lambda m, s: logged.append(s))
    assert logged == [1, 2, 3]

    a, b = _history(straight), _history(resumed)
    assert [r["step"] for r in b] == [1.0, 2.0, 3.0]
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            assert abs(ra[k] - rb[k]) < 1e-5, f"step {ra['step']} {k}: {ra[k]} vs {rb[k]}"
    wa = load_model(straight / "model")[0].state_dict()
    wb = load_model(resumed / "model")[0].state_dict()
    w0 = load_model(model_dir)[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)
    assert not (resumed / "critic").exists()  # grpo: no critic is built, stepped or saved
    assert not (checkpoint.latest(resumed) / "critic").exists()


def test_only_gae_builds_a_critic(data_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gae"
    ppo.run(small_ppo(steps=1, advantage="gae"), data_dir, model_dir, out)
    assert (out / "critic" / "value_head.safetensors").is_file()
    assert (checkpoint.latest(out) / "critic" / "value_head.safetensors").is_file()
    assert ppo.PPOTrainer(small_ppo(advantage="rloo"), data_dir, model_dir, tmp_path / "r").critic is None
    with pytest.raises(ValueError, match=r"written by a run with another ppo\.advantage"):
        ppo.PPOTrainer(small_ppo(steps=2, advantage="grpo"), data_dir, model_dir, out).maybe_resume()


def test_full_context_agent_trains_in_its_own_mode(data_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    """The full-context baseline is trained the same way: rollouts keep every turn, the stitched pass
    scores each turn against that whole context (exact, as the sampled log-probs show)."""
    cfg = small_ppo(agent={"max_new_tokens": 12, "max_turns": 3, "mode": "full"})
    trainer = ppo.PPOTrainer(cfg, data_dir, model_dir, tmp_path)
    trajs, _ = trainer.rollout()
    assert {t.mode for t in trajs} == {"full"}
    longer = [t for t in trajs if len(t.turns) > 2]
    for t in longer:  # turn 3 sees turns 1 and 2, not only the last one
        assert t.turns[2].context_ids[: len(t.turns[1].context_ids)] == t.turns[1].context_ids
    for s in trainer.score([stitch(t) for t in trajs]):
        behaviour = torch.tensor(s.seq.old_logprobs) * s.loss_mask
        assert float((behaviour - s.old_logprobs).abs().max()) < 1e-4


def test_group_estimators_need_groups_and_sampling() -> None:
    with pytest.raises(ValueError, match="group_size >= 2"):
        small_ppo(group_size=1)
    with pytest.raises(ValueError, match="temperature > 0"):
        small_ppo(agent={"temperature": 0.0})
    assert small_ppo(advantage="gae", group_size=1).group_size == 1
    with pytest.raises(ValueError, match="oversample 2 picks groups"):
        small_ppo(advantage="gae", group_size=1, oversample=2)


def test_learning_curve_points_before_and_during_training(
    data_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    logged: list[tuple[int, dict[str, float]]] = []
    cfg = small_ppo(steps=2, eval_every=1, eval_tasks=2, eval_objectives=[1])
    ppo.run(cfg, data_dir, model_dir, tmp_path, log=lambda m, s: logged.append((s, m)))
    curve = [(s, m["ppo/heldout_em_n1"]) for s, m in logged if "ppo/heldout_em_n1" in m]
    assert [s for s, _ in curve] == [0, 1, 2]
    assert all(0.0 <= em <= 1.0 for _, em in curve)
    rows = json.loads((tmp_path / "metrics_history.json").read_text())
    assert rows[0]["step"] == 0 and "ppo/heldout_em_n1" in rows[0]
    assert all("ppo/reward_ma" in r and "ppo/group_reward_std" in r for r in rows[1:])
    # The model carries its curve; evaluation draws it into its report.
    assert json.loads((tmp_path / "model" / ppo.HISTORY_FILE).read_text()) == rows
    from mem1_core.config import EvalConfig
    from mem1_core.eval import evaluate

    cfg = EvalConfig(objectives=[1], modes=["mem1"], n_tasks_per_objective=1, agent={"max_new_tokens": 8})
    result = evaluate.run(cfg, data_dir, tmp_path / "model", tmp_path / "eval")
    png = tmp_path / "eval" / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert 'alt="learning_curve"' in result.files["report"].read_text()


def test_cli_ppo_runs_and_prints_metrics(data_dir: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    from mem1_core.cli import main

    rc = main(
        [
            "ppo", "--data-dir", str(data_dir), "--model", str(model_dir), "--out", str(tmp_path),
            "--set", "ppo.steps=1", "--set", "ppo.prompts_per_step=2", "--set", "ppo.minibatch_size=2",
            "--set", "ppo.agent.max_new_tokens=8", "--set", "ppo.agent.max_turns=1",
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "ppo step 1:" in out and "reward=" in out and "kl=" in out
    assert (tmp_path / "model" / "mem1.json").is_file()


def test_too_many_prompts_is_a_clear_error(data_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prompts_per_step 999"):
        ppo.PPOTrainer(small_ppo(prompts_per_step=999), data_dir, model_dir, tmp_path)
    n = len(ppo.load_tasks(data_dir, "train"))
    with pytest.raises(ValueError, match=f"x ppo.oversample 2 is more than the {n} train tasks"):
        ppo.PPOTrainer(small_ppo(prompts_per_step=n // 2 + 1, oversample=2), data_dir, model_dir, tmp_path)


def test_random_seed_isolation() -> None:
    """Task sampling state round-trips through a checkpoint's RNG record."""
    r = random.Random(5)
    state = checkpoint.rng_state(r)
    first = r.random()
    r2 = random.Random(0)
    checkpoint.restore_rng(state, r2)
    assert r2.random() == first


def test_flex_training_on_cpu_is_refused_clearly(data_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CPU backward"):
        ppo.PPOTrainer(small_ppo(attention="flex"), data_dir, model_dir, tmp_path)


def test_f1_reward_gives_partial_credit_and_nothing_for_a_format_error(
    data_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    from mem1_core.agent.types import Trajectory

    def traj(preds: list[str], error: str | None = None) -> Trajectory:
        gold = [["Ada Lovelace"], ["Paris"]]
        return Trajectory("t", "mem1", 2, 0, reward=0.5, predictions=preds, gold=gold, format_error=error)

    assert ppo.episode_reward(traj(["Ada Byron", "Paris"]), "env") == 0.5
    assert ppo.episode_reward(traj(["Ada Byron", "Paris"]), "f1") == pytest.approx((0.5 + 1.0) / 2)
    assert ppo.episode_reward(traj(["Ada Lovelace", "Paris"], error="no tag"), "f1") == 0.0
    trainer = ppo.PPOTrainer(small_ppo(steps=1, reward="f1"), data_dir, model_dir, tmp_path)
    metrics = trainer.train_step()
    assert 0.0 <= metrics["reward"] <= 1.0 and metrics["em"] <= metrics["reward"] + 1e-9


def test_grounded_reward_counts_only_answers_read_in_an_observation(
    data_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    from mem1_core.agent.types import Trajectory, Turn

    def traj(preds: list[str], observations: list[str]) -> Trajectory:
        turns = [Turn([1], [2], "x", observation=o) for o in observations]
        gold = [["Ada Lovelace"], ["Paris"], ["yes"]]
        return Trajectory("t", "mem1", 3, 0, turns=turns, reward=1.0, predictions=preds, gold=gold)

    docs = ["<info>(Title: Ada) Ada Lovelace was born in London.</info>", "<info>Lyon is big.</info>"]
    right = ["Ada Lovelace", "Paris", "yes"]
    # Paris is right but was never read: recalled from the weights, so it earns nothing.
    assert ppo.episode_reward(traj(right, docs), "grounded") == pytest.approx(2 / 3)
    assert ppo.episode_reward(traj(right, docs), "env") == 1.0
    assert ppo.episode_reward(traj(right, [*docs, "<info>Paris, the capital.</info>"]), "grounded") == 1.0
    # Whole words only: "Ada" inside "Adams" is not a read of "Ada".
    assert not ppo._was_read("Ada", ppo.observed_text(traj(right, ["<info>Adams</info>"])))
    trainer = ppo.PPOTrainer(small_ppo(steps=1, reward="grounded"), data_dir, model_dir, tmp_path)
    metrics = trainer.train_step()
    assert 0.0 <= metrics["reward"] <= metrics["em"] + 1e-9  # grounding only takes answers away
