"""What is registered, checked locally before any MLflow call: the model dir, the data set, the eval metrics.

Every problem is a RegistryError naming the file (and line), so a registration fails before it writes
anything remote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mem1_core.models import ModelIntegrityError, base_provenance, load_grammar, verify_model_dir
from mem1_core.protocol.tags import TagGrammar

METRICS_FILE = "metrics.json"


class RegistryError(RuntimeError):
    """Inputs that cannot be registered (missing files, no gate metric); the message names the file."""


def weights_hash(model_dir: Path) -> str:
    """sha256 over (file name, file sha256) of every safetensors file: the identity of the weights."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RegistryError(f"{model_dir}: no *.safetensors weights (only safetensors models are registered)")
    outer = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        outer.update(f"{f.name}:{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def check_model_dir(model_dir: Path) -> TagGrammar:
    """A model dir written by models.save_model, weights unchanged since; returns its tag grammar."""
    if not model_dir.is_dir():
        raise RegistryError(f"{model_dir}: model dir not found")
    if not (model_dir / "config.json").is_file():
        raise RegistryError(f"{model_dir}: missing config.json (not a saved model dir)")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise RegistryError(f"{model_dir}: missing tokenizer files")
    pickles = sorted(p.name for p in [*model_dir.glob("*.bin"), *model_dir.glob("*.pt")])
    if pickles:
        raise RegistryError(f"{model_dir}: pickle weight files {pickles}; only safetensors are registered")
    try:
        verify_model_dir(model_dir)
    except ModelIntegrityError as e:
        raise RegistryError(str(e)) from None
    return load_grammar(model_dir)


def weights_dtype(model_dir: Path) -> str:
    """The dtype the saved weights are stored in (config.json), e.g. float32."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def model_origin(model_dir: Path) -> dict[str, str]:
    """Where a model's weights come from and under which licence, for the registry's description and tags."""
    base = base_provenance(model_dir)
    origin = {
        "base_model": str(base.get("name", "unknown")),
        "base_license": str(base.get("license", "unknown")),
        "weights_dtype": weights_dtype(model_dir),
    }
    if base.get("upstream"):
        origin["base_upstream"] = str(base["upstream"])
    if base.get("quantization"):
        origin["base_quantization"] = str(base["quantization"])
    if base.get("distribution"):
        origin["base_source"] = f"{base['distribution']}=={base.get('version', '')} ({base.get('file', '')})"
    return origin


def version_description(origin: dict[str, str]) -> str:
    """One paragraph a consumer reads in the MLflow UI before loading the model."""
    parts = [f"MEM1 agent (pyfunc loop) fine-tuned from {origin['base_model']}"]
    if "base_upstream" in origin:
        parts[0] += f" ({origin['base_upstream']})"
    parts.append(f"Base licence: {origin['base_license']}.")
    if "base_quantization" in origin:
        parts.append(f"Base weights: {origin['base_quantization']}, from {origin.get('base_source', '?')}.")
    parts.append(f"Registered weights: {origin['weights_dtype']} safetensors.")
    return parts[0] + ". " + " ".join(parts[1:])


def _read_json(path: Path, missing: str) -> Any:
    """A JSON file's content; a RegistryError naming the file (and line) when absent or malformed."""
    if not path.is_file():
        raise RegistryError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def dataset_hash(data_dir: Path) -> str:
    path = data_dir / "manifest.json"
    manifest = _read_json(path, f"manifest not found (is {data_dir} a composed data dir?)")
    value = manifest.get("dataset_hash") if isinstance(manifest, dict) else None
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{path}: field 'dataset_hash' is missing or empty")
    return value


def read_eval(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / METRICS_FILE
    data = _read_json(path, "eval metrics not found (run `mem1 eval` first)")
    if not isinstance(data, dict) or not isinstance(data.get("grid"), list):
        raise RegistryError(f"{path}: field 'grid' (a list of rows) is missing")
    return data
