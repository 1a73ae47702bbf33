"""Causal-LM pre-training before SFT: the window stream, a real Trainer run, and its place in sft.run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from rl_helpers import compose_small
from test_sft import small_sft_config

from mem1_core import models
from mem1_core.config import ConfigError, PretrainConfig, TinyModelConfig
from mem1_core.data.compose import load_corpus, load_tasks
from mem1_core.envs import domains
from mem1_core.rl import pretrain, sft

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compose_small(tmp_path_factory.mktemp("data"), n_train_tasks=24, n_eval_tasks=2)


@pytest.fixture(scope="module")
def texts(data_dir: Path) -> list[str]:
    return list(domains.tokenizer_texts("qa", load_tasks(data_dir, "train"), load_corpus(data_dir)))


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]):
    return models.train_tokenizer(texts, 500)


def test_windows_cut_one_eos_joined_stream_of_every_text(texts: list[str], tokenizer) -> None:
    windows, n_stream = pretrain.token_windows(texts, tokenizer, 64, seed=3)
    assert windows and all(len(w) == 64 for w in windows)
    assert 0 <= n_stream - 64 * len(windows) < 64  # only the short tail is dropped
    flat = [i for w in windows for i in w]
    eos = tokenizer.eos_token_id
    expected = sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)
    assert n_stream == expected
    pieces = tokenizer.decode(flat).split(tokenizer.eos_token)
    whole = pieces[1:-1]  # the first and last piece may be cut by a window edge
    assert whole and all(p in texts for p in whole)
    assert flat.count(eos) >= len(whole)
    again, _ = pretrain.token_windows(texts, tokenizer, 64, seed=3)
    other, _ = pretrain.token_windows(texts, tokenizer, 64, seed=4)
    assert again == windows and other != windows  # the shuffle follows the seed


def test_a_window_longer_than_the_stream_names_the_field(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"sft\.pretrain\.seq_len 512 .*\(\d+ tokens\)"):
        pretrain.run(PretrainConfig(steps=1, seq_len=512), None, tokenizer, ["a short text"], Path("."))


def test_pretraining_lowers_next_token_loss(texts: list[str], tokenizer, tmp_path: Path) -> None:
    tiny = TinyModelConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=500,
    )  # fmt: skip
    model = models.build_tiny_model(tiny, tokenizer, seed=0)
    logged: list[tuple[int, dict[str, float]]] = []
    cfg = PretrainConfig(steps=40, seq_len=64, batch_size=8, learning_rate=1e-2, warmup_steps=4)
    summary = pretrain.run(cfg, model, tokenizer, texts, tmp_path, lambda m, s: logged.append((s, m)))
    losses = [m["pretrain/loss"] for _, m in logged if "pretrain/loss" in m]
    assert summary["steps"] == 40 == len(losses)
    assert [s for s, m in logged if "pretrain/loss" in m] == list(range(1, 41))
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]
    assert summary["epochs"] == pytest.approx(40 * 8 / summary["windows"])
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, f"loss did not fall: {first:.3f} -> {last:.3f}"
    lrs = [m["pretrain/learning_rate"] for _, m in logged if "pretrain/learning_rate" in m]
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)
    assert lrs[-1] == pytest.approx(1e-3, rel=0.2)  # the cosine ends at min_lr_ratio x lr


def test_sft_run_pretrains_first_when_configured(data_dir: Path, tmp_path: Path) -> None:
    logged: list[tuple[int, dict[str, float]]] = []
    cfg = small_sft_config(pretrain={"steps": 12, "seq_len": 64, "batch_size": 4, "warmup_steps": 2})
    sft.run(cfg, data_dir, tmp_path, log=lambda m, s: logged.append((s, m)))
    summary = json.loads((tmp_path / "sft_summary.json").read_text())
    assert summary["pretrain_steps"] == 12 and summary["pretrain_windows"] > 0
    keys = [next(iter(m)).split("/")[0] for _, m in logged]
    first_sft = next(i for i, m in enumerate(logged) if "sft/loss" in m[1])
    assert "pretrain" in keys[:first_sft] and "pretrain" not in keys[first_sft:]  # pre-training comes first
    assert sum("pretrain/loss" in m for _, m in logged) == 12


def _fingerprint(out: Path) -> tuple[dict[str, str], str]:
    """The sha256 of every weight file (save_model records them in mem1.json) and of the tokenizer."""
    tokenizer = hashlib.sha256((out / "model" / "tokenizer.json").read_bytes()).hexdigest()
    return models.read_manifest(out / "model")["weights"], tokenizer


def test_sft_with_pretraining_is_bit_reproducible_for_a_seed(data_dir: Path, tmp_path: Path) -> None:
    """The learning bench's run-to-run SFT differences must come from the machine, not from the code:
    one seed, one thread count, one machine give the same tokenizer and weights, bit for bit."""
    pre = {"steps": 4, "seq_len": 64, "batch_size": 4, "warmup_steps": 1}
    digests = []
    for name, seed, every in (("a", 0, 0), ("b", 0, 0), ("c", 1, 0), ("d", 0, 2)):
        cfg = small_sft_config(epochs=0.3, pretrain=pre, seed=seed, checkpoint_every=every)
        sft.run(cfg, data_dir, tmp_path / name)
        digests.append(_fingerprint(tmp_path / name))
    assert digests[0] == digests[1], "two SFT runs of one seed differ"
    assert digests[2] != digests[0], "the seed does not reach the weights"
    # checkpointing saves state and draws no random number: the learning bench's cache key leaves it out
    assert digests[3] == digests[0], "checkpointing changed the weights"


def test_pretraining_is_off_by_default(data_dir: Path, tmp_path: Path) -> None:
    assert PretrainConfig().steps == 0
    sft.run(small_sft_config(epochs=0.5), data_dir, tmp_path)
    summary = json.loads((tmp_path / "sft_summary.json").read_text())
    assert not any(k.startswith("pretrain_") for k in summary)


def test_cli_sft_prints_each_stage_by_name(data_dir: Path, tmp_path: Path, capsys) -> None:
    from mem1_core.cli import main

    rc = main(
        [
            "sft", "--data-dir", str(data_dir), "--out", str(tmp_path), "--set", "sft.epochs=0.2",
            "--set", "sft.pretrain.steps=3", "--set", "sft.pretrain.seq_len=32",
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "pretrain step 1: " in out and "pretrain step 3: " in out and "sft step 1: " in out
    assert out.index("pretrain step 3: ") < out.index("sft step 1: ")
