"""End to end on CPU with small sizes: compose -> SFT -> PPO, scored by greedy MEM1 rollouts.

What a couple of CPU minutes can show honestly: SFT makes the teacher's held-out MEM1 turns far
more likely (per-token NLL of the oracle's turns on eval tasks, scored by the stitched pass), and
PPO keeps that and does not lower rollout EM. Greedy-rollout EM at this size is near zero; the
numbers are printed (run with -s); full-size numbers (configs/local-tiny.yaml) are in the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mem1_core.config import AgentConfig, ComposeConfig, PPOConfig, SFTConfig, TinyModelConfig, WorldConfig


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _evaluate(model_dir: Path, data_dir: Path, n_objectives: int) -> dict[str, float]:
    from mem1_core.agent.policy import HFPolicy
    from mem1_core.agent.rollout import run_episodes
    from mem1_core.data.compose import load_corpus, load_tasks
    from mem1_core.models import load_model
    from mem1_core.rl.sft import make_env_factory

    agent = AgentConfig(temperature=0.0, max_new_tokens=64)
    tasks = [t for t in load_tasks(data_dir, "eval") if t.n_objectives == n_objectives]
    model, tok = load_model(model_dir)
    trajs = run_episodes(
        tasks, make_env_factory(load_corpus(data_dir), agent), HFPolicy(model, tok, temperature=0.0), agent,
        mode="mem1", progress=False,
    )  # fmt: skip
    n = len(trajs)
    return {
        "em": sum(t.reward for t in trajs) / n,
        "format_error_rate": sum(t.format_error is not None and "budget" not in t.format_error for t in trajs)
        / n,
        "turns": sum(len(t.turns) for t in trajs) / n,
    }


def _teacher_nll(model_dir: Path, data_dir: Path, n_objectives: int) -> float:
    """Mean NLL per generated token of the oracle's MEM1 trajectories on held-out tasks."""
    from mem1_core.config import AgentConfig
    from mem1_core.data.compose import load_corpus, load_tasks
    from mem1_core.models import load_model
    from mem1_core.rl.sft import make_env_factory, oracle_trajectories
    from mem1_core.rl.trajectory import collate, stitch
    from mem1_core.rl.value import actor_logprobs

    agent = AgentConfig()
    tasks = [t for t in load_tasks(data_dir, "eval") if t.n_objectives == n_objectives]
    model, tok = load_model(model_dir)
    trajs = oracle_trajectories(tasks, make_env_factory(load_corpus(data_dir), agent), tok, agent)
    batch = collate([stitch(t) for t in trajs], pad_id=int(tok.pad_token_id))
    with torch.no_grad():
        lp, _ = actor_logprobs(model, batch, "dense")
    return float(-(lp * batch.loss_mask).sum() / batch.loss_mask.sum())


@pytest.mark.slow
def test_sft_learns_teacher_turns_and_ppo_does_not_undo_it(tmp_path: Path) -> None:
    from mem1_core import models
    from mem1_core.data import compose
    from mem1_core.rl import ppo, sft

    data = tmp_path / "data"
    compose.run(
        ComposeConfig(
            world=WorldConfig(n_people=80, n_films=30, n_cities=12, n_companies=12),
            n_train_tasks=96,
            n_eval_tasks=12,
            eval_objectives=[2],
            hops=[1],
        ),
        data,
    )
    tiny = TinyModelConfig(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256, vocab_size=900,
    )  # fmt: skip
    sft_cfg = SFTConfig.model_validate(
        {"model": {"tiny": tiny.model_dump()}, "epochs": 3.0, "learning_rate": 3e-3, "batch_size": 8}
    )
    sft_dir = sft.run(sft_cfg, data, tmp_path / "sft")

    # The untrained baseline: same tokenizer and architecture, random weights.
    _, tok = models.load_model(sft_dir)
    untrained = models.save_model(models.build_tiny_model(tiny, tok, seed=1), tok, tmp_path / "untrained")

    ppo_cfg = PPOConfig.model_validate(
        {
            "steps": 3,
            "prompts_per_step": 8,
            "minibatch_size": 4,
            "checkpoint_every": 3,
            "actor_lr": 1e-5,
            "agent": {"max_new_tokens": 64},
        }
    )
    ppo_dir = ppo.run(ppo_cfg, data, sft_dir, tmp_path / "ppo")

    nll = {
        k: _teacher_nll(d, data, 2) for k, d in (("untrained", untrained), ("sft", sft_dir), ("ppo", ppo_dir))
    }
    before = _evaluate(untrained, data, 2)
    after_sft = _evaluate(sft_dir, data, 2)
    after_ppo = _evaluate(ppo_dir, data, 2)
    print(f"\n2-objective held-out teacher NLL/token: {nll}")
    print(f"2-objective greedy rollouts: untrained {before}\n  sft {after_sft}\n  ppo {after_ppo}")

    assert nll["sft"] < nll["untrained"] - 2.0, nll
    assert nll["ppo"] < nll["sft"] + 0.5, nll
    assert before["format_error_rate"] > 0.9  # random weights never write a well-formed turn
    assert after_sft["em"] >= before["em"]
    assert after_ppo["em"] >= after_sft["em"] - 0.1
