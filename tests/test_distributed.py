"""Data-parallel PPO under a real `torchrun --nproc_per_node 2` (CPU, gloo), and the DeepSpeed guards.

The torchrun test runs a small worker (written to tmp) that trains through the real PPOTrainer and
records, per rank, a sha256 of its actor weights and which writers (checkpoint.save, models.save_model,
Critic.save) it called; the writers are wrapped to record, then do their real work.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rl_helpers import SFT_WORKER, compose_small, untrained_tiny_model, worker_env

from mem1_core.config import ConfigError, PPOConfig, SFTConfig
from mem1_core.rl import distributed

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path

    import torch

    from mem1_core.config import PPOConfig
    from mem1_core.rl import distributed, ppo
    from write_recorder import record_writes

    cfg = PPOConfig.model_validate(json.loads(sys.argv[1]))
    data_dir, model_dir, out_dir, report_dir = (Path(a) for a in sys.argv[2:6])
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    d = distributed.setup()
    writes = record_writes()
    trainer = ppo.PPOTrainer(cfg, data_dir, model_dir, out_dir, d)
    resumed_at = []
    original_resume = trainer.maybe_resume

    def resume_and_record():
        found = original_resume()
        resumed_at.append(trainer.step if found else None)
        return found

    trainer.maybe_resume = resume_and_record
    trainer.train()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.actor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    report = {
        "rank": d.rank,
        "world_size": d.world_size,
        "backend": torch.distributed.get_backend(),
        "actor_sha256": digest.hexdigest(),
        "writes": writes,
        "resumed_at": resumed_at[0],
        "history_steps": [h["step"] for h in trainer.history],
    }
    (report_dir / f"rank{d.rank}.json").write_text(json.dumps(report))
    distributed.teardown(d)
    """
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compose_small(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: PPO's data-parallel mechanics, not learning."""
    return untrained_tiny_model(data_dir, tmp_path_factory.mktemp("sft") / "model")


def small_ppo(**over: object) -> PPOConfig:
    base = {
        "steps": 1,
        "prompts_per_step": 4,
        "group_size": 2,
        "minibatch_size": 2,
        "checkpoint_every": 1,
        "actor_lr": 1e-2,
        "critic_lr": 1e-2,
        "kl_coef": 0.1,
        "agent": {"max_new_tokens": 10, "max_turns": 2, "temperature": 1.0},
    }
    return PPOConfig.model_validate({**base, **over})


def torchrun(cfg: PPOConfig, data_dir: Path, model_dir: Path, out_dir: Path, tmp: Path) -> list[dict]:
    """Launch the PPO worker on 2 CPU ranks; return the two ranks' reports."""
    return _launch(WORKER, [cfg.model_dump_json(), str(data_dir), str(model_dir), str(out_dir)], tmp)


def _launch(source: str, args: list[str], tmp: Path) -> list[dict]:
    worker = tmp / "worker.py"
    worker.write_text(source, encoding="utf-8")
    reports = tmp / "reports"
    if reports.exists():
        shutil.rmtree(reports)
    reports.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(worker), *args, str(reports)]
    env = worker_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_torchrun_two_ranks_stay_in_sync_rank0_writes_and_resume(
    data_dir: Path, model_dir: Path, tmp_path: Path, advantage: str
) -> None:
    from mem1_core.rl import checkpoint

    out = tmp_path / "ppo"
    initial = {k: v.clone() for k, v in _load_actor(model_dir).items()}

    # Step 1 from scratch (grpo: each rank rolls out whole groups of its tasks).
    first = torchrun(small_ppo(steps=1, advantage=advantage), data_dir, model_dir, out, tmp_path)
    assert [r["world_size"] for r in first] == [2, 2] and {r["backend"] for r in first} == {"gloo"}
    assert first[0]["actor_sha256"] == first[1]["actor_sha256"], "ranks diverged: gradients not averaged"
    assert [r["resumed_at"] for r in first] == [None, None]
    # checkpoint step_1 (actor, and the critic with gae), then the final model (and critic)
    saves = ["models.save_model", "Critic.save"] if advantage == "gae" else ["models.save_model"]
    assert first[0]["writes"] == ["checkpoint.save", *saves, *saves]
    assert first[1]["writes"] == [], "rank 1 must not write checkpoints or models"

    # Step 2 resumes from step_1 on both ranks and continues in lockstep.
    second = torchrun(small_ppo(steps=2, advantage=advantage), data_dir, model_dir, out, tmp_path)
    assert [r["resumed_at"] for r in second] == [1, 1]
    assert second[0]["actor_sha256"] == second[1]["actor_sha256"]
    assert second[0]["actor_sha256"] != first[0]["actor_sha256"], "step 2 did not change the actor"
    assert second[1]["writes"] == []

    history = json.loads((out / "metrics_history.json").read_text())
    assert [h["step"] for h in history] == [1.0, 2.0]  # one row per step: no gap, no duplicate
    assert sorted(p.name for p in checkpoint.checkpoint_root(out).iterdir()) == ["step_1", "step_2"]
    for row in history:
        assert 0.0 <= row["ppo/reward"] <= 1.0 and row["ppo/turns"] >= 1.0
        assert row["ppo/generated_tokens"] > 0 and row["ppo/update_tokens_per_s"] > 0

    trained = _load_actor(out / "model")
    assert any(not torch.equal(initial[k], trained[k]) for k in initial), "PPO left the actor unchanged"


@pytest.mark.slow
def test_torchrun_sft_shards_the_data_and_only_rank0_saves(data_dir: Path, tmp_path: Path) -> None:
    from mem1_core import models

    cfg = SFTConfig.model_validate(
        {
            "n_tasks": 8,
            "epochs": 1,
            "batch_size": 4,
            "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "vocab_size": 600}},
        }
    )
    out = tmp_path / "sft"
    reports = _launch(SFT_WORKER, [cfg.model_dump_json(), str(data_dir), str(out)], tmp_path)
    assert reports[0]["writes"] == ["models.save_model"] and reports[1]["writes"] == []
    summary = json.loads((out / "sft_summary.json").read_text())
    # Each step consumes batch_size examples on each of the 2 ranks: half the single-process steps.
    assert summary["steps"] == math.ceil(summary["examples"] / (2 * cfg.batch_size))
    model, _ = models.load_model(out / "model", cfg.model)  # hashes in mem1.json checked on load
    assert model.config.hidden_size == 32


def _load_actor(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_world_size_must_divide_prompts_and_minibatch(
    data_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    from mem1_core.rl.ppo import PPOTrainer

    two = distributed.Dist(rank=0, world_size=2)  # the check runs before any collective
    with pytest.raises(ConfigError, match=r"ppo\.prompts_per_step 3 must be a multiple of the 2 ranks"):
        PPOTrainer(small_ppo(prompts_per_step=3), data_dir, model_dir, tmp_path / "a", two)
    with pytest.raises(ConfigError, match=r"ppo\.minibatch_size 3 must be a multiple of the 2 ranks"):
        PPOTrainer(small_ppo(minibatch_size=3), data_dir, model_dir, tmp_path / "b", two)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_deepspeed_missing_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    with pytest.raises(distributed.DeepSpeedUnavailable, match=r"sft\.deepspeed_config=x\.json asks for"):
        distributed.require_deepspeed("x.json", "sft.deepspeed_config")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice of optimizer")
def test_config_adam_becomes_torch_adam_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 3}}
    out = distributed.cpu_safe_optimizer(cfg)
    assert out["optimizer"]["params"] == {"lr": 1e-4, "torch_adam": True}
    assert "torch_adam" in capsys.readouterr().out
    plain = {"zero_optimization": {"stage": 2}}  # no optimizer section: the caller's torch AdamW is used
    assert distributed.cpu_safe_optimizer(plain) == {"zero_optimization": {"stage": 2}}
    assert distributed.comm_backend() == "gloo"


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2.json", 2), ("deepspeed_zero3.json", 3)])
def test_deepspeed_configs_parse_in_deepspeed_after_resolving_auto(name: str, stage: int) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = distributed.load_deepspeed_config(REPO / "configs" / name)
    with pytest.raises(TypeError):  # DeepSpeed itself does not understand HF's "auto"
        DeepSpeedConfig(raw)
    resolved = distributed.resolve_deepspeed_config(
        raw, micro_batch=4, world_size=1, grad_clip=0.5, bf16=True, hidden_size=64
    )
    parsed = DeepSpeedConfig(resolved)  # world size 1 here: no process group
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == 4 and parsed.gradient_accumulation_steps == 1
    assert parsed.train_batch_size == 4 and parsed.gradient_clipping == 0.5
    assert resolved["bf16"]["enabled"] is True and resolved["fp16"]["enabled"] is False
    if stage == 3:
        assert parsed.zero_config.reduce_bucket_size == 64 * 64
        assert parsed.zero_config.param_persistence_threshold == 640


@pytest.mark.parametrize("name", ["deepspeed_zero2.json", "deepspeed_zero3.json"])
def test_deepspeed_configs_parse_in_transformers_for_sft(name: str) -> None:
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(str(REPO / "configs" / name))
    assert hf.is_zero3() == (name == "deepspeed_zero3.json")


def test_resolve_refuses_auto_it_cannot_fill() -> None:
    raw = {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"'auto' at \['optimizer.params.lr'\]"):
        distributed.resolve_deepspeed_config(
            raw, micro_batch=1, world_size=1, grad_clip=1.0, bf16=False, hidden_size=8
        )


def test_single_process_helpers_are_the_identity() -> None:
    one = distributed.Dist()
    x = torch.tensor([1.0, 2.0, 4.0])
    mean, std, n = distributed.global_mean_std(x, one)
    assert torch.equal(mean, x.mean()) and torch.equal(std, x.std()) and n == 3
    assert distributed.shard([1, 2, 3], one) == [1, 2, 3]
    assert distributed.reduce_metrics({"a": 1.5}, one) == {"a": 1.5}
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([3.0, 4.0])
    distributed.average_gradients([p], one)
    assert p.grad.tolist() == [3.0, 4.0]
