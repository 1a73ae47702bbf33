"""SFT warm-up: per-turn examples with loss on outputs only, TRL's labels, and a real small run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rl_helpers import INFO_LO, compose_small, random_trajectory

from mem1_core.config import SFTConfig, TinyModelConfig
from mem1_core.rl import sft

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_sft_config(**over) -> SFTConfig:
    tiny = TinyModelConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=700,
    )  # fmt: skip
    base = {"model": {"base_model": "tiny", "tiny": tiny.model_dump()}, "epochs": 1.0, "batch_size": 8}
    return SFTConfig.model_validate({**base, **over})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compose_small(
        tmp_path_factory.mktemp("data"), n_train_tasks=24, n_eval_tasks=4, eval_objectives=(1, 2)
    )


def test_examples_put_loss_on_outputs_only() -> None:
    import random

    rng = random.Random(0)
    trajs = [random_trajectory(rng, "mem1", n) for n in (1, 3, 6)]
    examples, skipped = sft.examples_from_trajectories(trajs, max_seq_len=10_000)
    assert skipped == 0
    assert len(examples) == sum(len(t.turns) for t in trajs)
    turns = [u for t in trajs for u in t.turns]
    for ex, turn in zip(examples, turns, strict=True):
        assert ex["input_ids"] == turn.context_ids + turn.output_ids
        loss_ids = [i for i, m in zip(ex["input_ids"], ex["completion_mask"], strict=True) if m]
        assert loss_ids == turn.output_ids
        assert all(i < INFO_LO for i in loss_ids)  # observation ids never carry loss
    short, skipped = sft.examples_from_trajectories(trajs, max_seq_len=20)
    assert skipped > 0 and all(len(e["input_ids"]) <= 20 for e in short)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        sft.examples_from_trajectories(trajs, max_seq_len=10_000, vocab_size=100)


def test_trl_labels_follow_the_completion_mask(tmp_path: Path) -> None:
    """What TRL trains on is exactly our mask: labels -100 on every context token."""
    import random

    from rl_helpers import tiny_lm
    from transformers import PreTrainedTokenizerFast

    from mem1_core.models import train_tokenizer

    rng = random.Random(1)
    examples, _ = sft.examples_from_trajectories([random_trajectory(rng, "full", 4)], 10_000)
    tok: PreTrainedTokenizerFast = train_tokenizer(["some text for a tokenizer"] * 4, 300)
    trainer = sft.build_trainer(small_sft_config(), tiny_lm("sdpa"), tok, examples, tmp_path, None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]
        expect = [i if m else -100 for i, m in zip(ex["input_ids"], ex["completion_mask"], strict=True)]
        assert batch["labels"][row, :n].tolist() == expect
        assert (batch["labels"][row, n:] == -100).all()


def test_read_trajectories_names_the_bad_line(tmp_path: Path) -> None:
    import random

    good = random_trajectory(random.Random(2), "mem1", 2).to_json()
    path = tmp_path / "t.jsonl"
    path.write_text(good + "\n" + json.dumps({"task_id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl:2"):
        sft.read_trajectories(path)
    path.write_text(good + "\n\n")
    assert len(sft.read_trajectories(path)) == 1


def test_sft_run_trains_and_saves_a_loadable_model(data_dir: Path, tmp_path: Path) -> None:
    from mem1_core.models import load_model, read_manifest

    logged: list[tuple[int, dict[str, float]]] = []
    cfg = small_sft_config(epochs=2.0, learning_rate=3e-3)
    model_dir = sft.run(cfg, data_dir, tmp_path, log=lambda m, s: logged.append((s, m)))
    model, tok = load_model(model_dir)
    assert read_manifest(model_dir)["extra"]["sft"]["examples"] > 0
    summary = json.loads((tmp_path / "sft_summary.json").read_text())
    assert summary["teacher_mean_reward"] > 0.5  # the oracle solves most tasks
    losses = [m["sft/loss"] for _, m in logged if "sft/loss" in m]
    assert len(losses) == summary["steps"] >= 4
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert len(tok) == model.get_input_embeddings().weight.shape[0]


def test_teacher_trajectories_need_a_real_base_model(data_dir: Path, tmp_path: Path) -> None:
    cfg = small_sft_config(teacher_trajectories=str(tmp_path / "t.jsonl"))
    with pytest.raises(ValueError, match="needs a real base_model"):
        sft.run(cfg, data_dir, tmp_path)


def test_lora_run_saves_one_plain_merged_model(data_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from mem1_core.models import load_model, read_manifest

    cfg = small_sft_config(n_tasks=8, learning_rate=1e-2, lora={"r": 4, "alpha": 8})
    model_dir = sft.run(cfg, data_dir, tmp_path)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n], "adapters are merged, not saved beside"
    model, _ = load_model(model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert read_manifest(model_dir)["extra"]["base"]["name"] == "tiny"


def test_bf16_is_refused_where_it_has_no_fast_kernels(data_dir: Path, tmp_path: Path) -> None:
    if sft.bf16_supported():
        pytest.skip("this machine has bf16 matmul kernels (CUDA or a CPU with AVX-512 bf16 / AMX)")
    with pytest.raises(ValueError, match=r"sft\.bf16 is set, but this machine has no fast bf16 matmul"):
        sft.run(small_sft_config(bf16=True), data_dir, tmp_path)
    assert not (tmp_path / "model").exists()


def test_mem1_mask_trainer_learns_and_resumes_bit_identically(data_dir: Path, tmp_path: Path) -> None:
    """One stitched pass per trajectory: the loss falls, and a run killed after a checkpoint, rerun into
    the same out_dir, ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    cfg = small_sft_config(
        trainer="mem1_mask", epochs=3.0, batch_size=4, learning_rate=3e-3, checkpoint_every=3
    )
    losses: list[float] = []
    straight = sft.run(
        cfg,
        data_dir,
        tmp_path / "a",
        log=lambda m, s: losses.extend(v for k, v in m.items() if k == "sft/loss"),
    )
    summary = json.loads((tmp_path / "a" / "sft_summary.json").read_text())
    assert len(losses) == summary["steps"] == 18  # 24 tasks / 4 a step x 3 epochs
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, f"loss did not fall: {losses}"
    assert not (tmp_path / "a" / "checkpoints").exists(), "checkpoints are removed once the model is saved"

    class Killed(Exception):
        pass

    def die_at_step_8(metrics: dict[str, float], step: int) -> None:
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        sft.run(cfg, data_dir, tmp_path / "b", log=die_at_step_8)
    assert (tmp_path / "b" / "checkpoints" / "step_6").is_dir()
    resumed = sft.run(cfg, data_dir, tmp_path / "b")
    want, got = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert want.keys() == got.keys()
    assert all(bool((want[k] == got[k]).all()) for k in want), (
        "resumed weights differ from the straight run's"
    )


def test_mem1_mask_trainer_with_lora_saves_merged_weights(data_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    cfg = small_sft_config(trainer="mem1_mask", n_tasks=8, learning_rate=1e-2, lora={"r": 4, "alpha": 8})
    model_dir = sft.run(cfg, data_dir, tmp_path)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n]
