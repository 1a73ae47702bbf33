"""The PPO update bench's GPU code path, driven on CPU at a tiny size so it has no trivial bugs the day
a GPU runs it; and its clear refusal without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import bench_ppo_update as bench

TINY = {**bench.TINY, "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64}
PATHS = ("prefix", "per_turn", "dense")  # flex: no CPU backward in torch 2.13


def test_gpu_code_path_runs_every_path_at_a_tiny_size(tmp_path: Path) -> None:
    cases = [bench.Case(m, 700) for m in PATHS] + [bench.Case(m, 600, 2) for m in ("prefix", "per_turn")]
    cases.append(bench.Case("flex", 600))  # fails on CPU (no backward): noted in the table, not raised
    metrics = bench.main_gpu(tmp_path, cases=cases, cfg_kwargs=TINY, device="cpu", dtype_name="float32")
    for m in PATHS:
        assert metrics[f"ppo_update_{m}_L700_loss_tokens_per_s"] > 0
    assert "ppo_update_prefix_g2_L600_speedup_vs_per_turn" in metrics
    assert not any(k.startswith("ppo_update_flex") for k in metrics)
    text = (tmp_path / "ppo_update_gpu.md").read_text()
    assert "| 600 | flex | 1 |" in text and "failed:" in text
    assert text.count("\n| 700 |") == 3


def test_prefix_feeds_fewer_tokens_than_per_turn_and_a_group_shares_its_prompt() -> None:
    _, _, turns, per_turn, _ = bench.build(bench.Case("per_turn", 1024, 2), 256)
    _, _, _, stitched, _ = bench.build(bench.Case("dense", 1024, 2), 256)
    _, _, _, prefix, _ = bench.build(bench.Case("prefix", 1024, 2), 256)
    assert per_turn - stitched == turns * bench.PROMPT - 2 * bench.PROMPT  # the prompt once per episode
    assert stitched - prefix == bench.PROMPT  # and once per group


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_run_without_cuda_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main_gpu(tmp_path)
