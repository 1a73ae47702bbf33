"""Which container images the components run in, fixed when the pipeline is compiled.

Components never pip-install at run time: every step runs in one of the project's images, whose
registry and tag come from MEM1_IMAGE_REGISTRY / MEM1_IMAGE_TAG (or flags) at compile time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_REGISTRY = "ghcr.io/mem1-pipelines"
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Images:
    """Fully qualified image references: CPU steps use `base`, GPU steps use `trainer`."""

    base: str
    trainer: str

    @classmethod
    def from_env(cls, registry: str | None = None, tag: str | None = None) -> Images:
        registry = (registry or os.environ.get("MEM1_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
        tag = tag or os.environ.get("MEM1_IMAGE_TAG") or DEFAULT_TAG
        if not registry or any(c.isspace() for c in registry + tag):
            raise ValueError(f"invalid image registry/tag: {registry!r}:{tag!r}")
        return cls(base=f"{registry}/mem1-base:{tag}", trainer=f"{registry}/mem1-trainer:{tag}")
