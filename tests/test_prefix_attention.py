"""The prefix path (shared prompt KV + batched segments) equals per-turn runs and the dense pass.

Log-probs and values match re-running every turn (fp32, 1e-4) in every mode, padded and packed,
with prompts shared by a group and prompts of different lengths in one batch; gradients of the
actor and critic equal the dense-mask path's; the log-probs the policy sampled with equal the
prefix pass's; PPO's `auto` picks it and logs the choice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from rl_helpers import (
    PAD,
    compose_small,
    random_trajectory,
    reference_per_turn,
    tiny_lm,
    untrained_tiny_model,
)

from mem1_core.agent.types import Trajectory, Turn
from mem1_core.config import PPOConfig
from mem1_core.rl import ppo, prefix
from mem1_core.rl.trajectory import collate, stitch
from mem1_core.rl.value import Critic, actor_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
MODES = ("mem1", "full", "truncate:2")


def _critic(lm: torch.nn.Module) -> Critic:
    critic = Critic(lm)
    torch.nn.init.normal_(critic.head.weight, std=1.0)
    torch.nn.init.normal_(critic.head.bias, std=1.0)
    return critic


def _with_prompt(traj: Trajectory, prompt: list[int]) -> Trajectory:
    """The same turns under another task prompt (a group: k episodes of one task)."""
    p = traj.prompt_len
    turns = [
        Turn(context_ids=prompt + t.context_ids[p:], output_ids=t.output_ids, output_text="")
        for t in traj.turns
    ]
    return Trajectory(
        task_id=traj.task_id, mode=traj.mode, n_objectives=1, prompt_len=len(prompt), turns=turns
    )


def _trajs(seed: int, mode: str, group: int = 1) -> list[Trajectory]:
    rng = random.Random(seed)
    trajs = [random_trajectory(rng, mode, n, task_id=f"{mode}-{n}") for n in range(1, 8)]
    if group > 1:  # every `group` consecutive episodes share the first one's prompt
        trajs = [
            _with_prompt(t, trajs[k - k % group].turns[0].context_ids[: trajs[k - k % group].prompt_len])
            for k, t in enumerate(trajs)
        ]
    return trajs


def _worst_vs_per_turn(lm: torch.nn.Module, trajs: list[Trajectory], pack: bool) -> float:
    critic = _critic(lm)
    refs = [reference_per_turn(lm, critic.head, t) for t in trajs]
    seqs = [stitch(t) for t in trajs]
    batch = collate(seqs, pad_id=PAD, pack=pack, max_len=4096)
    with torch.no_grad():
        lp, _ = actor_logprobs(lm, batch, "prefix")
        values = critic(batch, "prefix")
    worst = 0.0
    for k, seq in enumerate(seqs):
        row, off = batch.placement[k]
        for t, (ref_lp, ref_v) in enumerate(zip(*refs[k], strict=True)):
            idx = [off + i for i in range(len(seq)) if seq.turn_index[i] == t and seq.loss_mask[i]]
            worst = max(
                worst,
                (lp[row, idx] - ref_lp).abs().max().item(),
                (values[row, idx] - ref_v).abs().max().item(),
            )
    return worst


@pytest.mark.parametrize(("attn", "group"), [("eager", 1), ("sdpa", 3)])
@pytest.mark.parametrize("mode", MODES)
def test_prefix_pass_equals_per_turn_runs(attn: str, mode: str, group: int) -> None:
    lm = tiny_lm(attn)
    trajs = _trajs(hash((attn, mode, group)) % 1000, mode, group)
    for pack in (False, True):
        worst = _worst_vs_per_turn(lm, trajs, pack)
        assert worst < TOL, f"pack={pack}: max abs diff {worst}"


def test_a_group_runs_its_prompt_once_and_prompts_of_any_length_mix() -> None:
    trajs = _trajs(5, "mem1", group=3)  # 7 episodes: groups of 3, 3, 1 with prompts of 3..12 tokens
    batch = collate([stitch(t) for t in trajs], pad_id=PAD, pack=True)
    pl = prefix.plan(batch)
    assert pl.prompt_ids.shape[0] == 3
    lens = {trajs[0].prompt_len, trajs[3].prompt_len, trajs[6].prompt_len}
    assert set(pl.prompt_lens.tolist()) == lens
    n_seg = sum(
        1 for t in trajs for turn in t.turns if len(turn.context_ids) - t.prompt_len + len(turn.output_ids)
    )
    assert sum(int(b.input_ids.shape[0]) for b in pl.buckets) == n_seg
    # Every real stitched token has a source row; padding reads the zero row.
    assert int((pl.source != pl.n_tokens_run).sum()) == batch.n_tokens  # the zero row's index


def test_buckets_keep_padding_small() -> None:
    assert prefix._buckets([100, 300, 300, 290], 0.75) == [[1, 2, 3], [0]]
    assert prefix._buckets([5], 0.75) == [[0]]


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_the_dense_paths(mode: str) -> None:
    """PPO-shaped actor and critic losses: the same gradients as the dense mask, to 1e-4 (fp32)."""
    trajs = _trajs(11, mode, group=2)
    batch = collate([stitch(t) for t in trajs], pad_id=PAD, pack=False)
    gen = torch.Generator().manual_seed(0)
    adv, ret = torch.randn(batch.shape, generator=gen), torch.randn(batch.shape, generator=gen)
    mask, n = batch.loss_mask, batch.loss_mask.sum()
    got: dict[str, dict[str, torch.Tensor]] = {}
    for backend in ("dense", "prefix"):
        lm = tiny_lm("sdpa")
        critic = Critic(tiny_lm("sdpa", seed=1))
        torch.nn.init.normal_(critic.head.weight, std=0.1, generator=torch.Generator().manual_seed(2))
        lp, ent = actor_logprobs(lm, batch, backend, with_entropy=True)  # type: ignore[arg-type]
        assert ent is not None
        (-(lp * adv * mask).sum() / n - 0.01 * (ent * mask).sum() / n).backward()
        v = critic(batch, backend)  # type: ignore[arg-type]
        (0.5 * ((v - ret) ** 2 * mask).sum() / n).backward()
        got[backend] = {**_grads(lm), **{f"critic.{k}": g for k, g in _grads(critic).items()}}
    assert got["dense"].keys() == got["prefix"].keys()
    assert "model.embed_tokens.weight" in got["prefix"]  # the shared prompt passes gradient back
    scale = max(g.abs().max().item() for g in got["dense"].values())
    assert scale > 0.1, f"gradients too small ({scale}) for an absolute check to mean much"
    worst = max((got["dense"][k] - got["prefix"][k]).abs().max().item() for k in got["dense"])
    assert worst < TOL, f"max abs gradient diff {worst}"


def test_gradient_checkpointing_is_refused_clearly() -> None:
    lm = tiny_lm("sdpa").train()
    lm.gradient_checkpointing_enable()
    batch = collate([stitch(random_trajectory(random.Random(1), "mem1", 2))], pad_id=PAD)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        actor_logprobs(lm, batch, "prefix")


@pytest.fixture(scope="module")
def ppo_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = compose_small(tmp_path_factory.mktemp("data"))
    return data, untrained_tiny_model(data, tmp_path_factory.mktemp("sft") / "model")


def _ppo_config(mode: str, attention: str) -> PPOConfig:
    return PPOConfig.model_validate(
        {
            "steps": 1,
            "prompts_per_step": 2,
            "minibatch_size": 4,
            "group_size": 2,  # the two episodes of a task share its prompt
            "attention": attention,
            "agent": {"max_new_tokens": 12, "max_turns": 3, "mode": mode, "temperature": 0.7},
        }
    )


@pytest.mark.parametrize("mode", MODES)
def test_sampled_logprobs_equal_the_prefix_pass(
    ppo_dirs: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    """What HFPolicy sampled from (KV cache, logits / T) is what the prefix pass scores, padded or packed."""
    trainer = ppo.PPOTrainer(_ppo_config(mode, "prefix"), *ppo_dirs, tmp_path)
    trajs, _ = trainer.rollout()
    seqs = [stitch(t) for t in trajs]
    for pack in (False, True):
        batch = collate(seqs, trainer.pad_id, pack=pack)
        with torch.no_grad():
            lp, _ = actor_logprobs(trainer.actor, batch, "prefix", temperature=0.7)
        behaviour = batch.scatter([s.old_logprobs or [] for s in seqs]) * batch.loss_mask
        worst = float((lp - behaviour).abs().max())
        assert worst < TOL, f"pack={pack}: behaviour vs prefix log-probs differ by {worst}"


def test_auto_resolves_to_prefix_and_says_so(
    ppo_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = ppo.PPOTrainer(_ppo_config("mem1", "auto"), *ppo_dirs, tmp_path)
    assert trainer.backend == "prefix"
    assert "ppo: attention prefix (ppo.attention 'auto' on cpu)" in capsys.readouterr().out
    assert trainer.train_step()["attention_prefix"] == 1.0
