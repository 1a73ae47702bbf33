"""Tokenizer training, tiny model building, and the save/load round trip with its integrity check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mem1_core.config import ModelConfig, TinyModelConfig
from mem1_core.models import (
    MANIFEST,
    ModelIntegrityError,
    build_tiny_model,
    load_grammar,
    load_model,
    save_model,
    train_tokenizer,
    write_manifest,
)
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, REFERENCE_GRAMMAR

TEXTS = [
    "Who directed the film Blue Harbor? Blue Harbor was directed by Zimi Zojo in 1965.",
    "In which city was Zimi Zojo born? Zimi Zojo was born in Cesteisound.",
    "Doc 1(Title: Krezo Group) Krezo Group is a company founded in 2012. ‹not a tag› café naïve",
] * 30
TRICKY = (
    "<IS>Found: Cesteisound; 1965 | Q3 needs Zimi</IS><query>Zimi  Zojo\n</query>  é ‹x› 日本 <info>x</info>"
)
SMALL = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=64, vocab_size=400)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 400, DEFAULT_GRAMMAR)


def test_tags_are_single_tokens_and_decode_keeps_them(tokenizer) -> None:
    for tag in DEFAULT_GRAMMAR.special_tokens:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
    ids = tokenizer.encode(TRICKY, add_special_tokens=False)
    assert tokenizer.decode(ids) == TRICKY
    # trainers often decode with skip_special_tokens=True; tags must survive that too
    assert tokenizer.decode(ids, skip_special_tokens=True) == TRICKY
    # byte-level: decoding pieces and joining gives the same text (contexts are concatenated ids)
    cut = len(ids) // 2
    assert tokenizer.decode(ids[:cut]) + tokenizer.decode(ids[cut:]) == TRICKY
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert tokenizer.padding_side == "left"


def test_tokenizer_rejects_a_vocab_too_small_for_bytes_and_tags() -> None:
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_tokenizer(TEXTS, 100)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_model_vocab_matches_tokenizer(tokenizer, arch: str) -> None:
    model = build_tiny_model(SMALL.model_copy(update={"architecture": arch}), tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.model_type == arch
    ids = torch.tensor([tokenizer.encode(TRICKY, add_special_tokens=False)])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_tiny_model_rejects_bad_head_counts(tokenizer) -> None:
    with pytest.raises(ValueError, match="num_key_value_heads"):
        bad = SMALL.model_copy(update={"num_attention_heads": 3, "num_key_value_heads": 2})
        build_tiny_model(bad, tokenizer)


def test_save_load_round_trip(tokenizer, tmp_path: Path) -> None:
    model = build_tiny_model(SMALL, tokenizer, seed=3)
    out = save_model(model, tokenizer, tmp_path / "m", REFERENCE_GRAMMAR)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["weights"]) == {"model.safetensors"}
    assert not list(out.glob("*.bin")), "weights must be safetensors only"

    loaded, tok = load_model(out, ModelConfig())
    ids = tokenizer.encode(TRICKY, add_special_tokens=False)
    assert tok.encode(TRICKY, add_special_tokens=False) == ids  # the exact same tokenizer pipeline
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert load_grammar(out) == REFERENCE_GRAMMAR
    assert tok.padding_side == "left" and tok.pad_token_id == tokenizer.pad_token_id


def test_load_in_bfloat16(tokenizer, tmp_path: Path) -> None:
    out = save_model(build_tiny_model(SMALL, tokenizer), tokenizer, tmp_path / "m")
    loaded, _ = load_model(out, ModelConfig(dtype="bfloat16"))
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_tampered_weights_fail_with_the_file_named(tokenizer, tmp_path: Path) -> None:
    out = save_model(build_tiny_model(SMALL, tokenizer), tokenizer, tmp_path / "m")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors: sha256 .* does not match"):
        load_model(out)


def test_unrecorded_weight_file_fails_until_the_manifest_is_rewritten(tokenizer, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    out = save_model(build_tiny_model(SMALL, tokenizer), tokenizer, tmp_path / "m")
    save_file({"w": torch.zeros(3)}, str(out / "value_head.safetensors"))
    with pytest.raises(ModelIntegrityError, match=r"value_head\.safetensors"):
        load_model(out)
    write_manifest(out, DEFAULT_GRAMMAR)
    load_model(out)
    (out / "value_head.safetensors").unlink()
    with pytest.raises(ModelIntegrityError, match=r"value_head\.safetensors: weight file listed"):
        load_model(out)


def test_missing_local_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="expected a model directory"):
        load_model(tmp_path / "file.txt")
