"""Which saving functions a torchrun worker called: the tests assert that only rank 0 writes a checkpoint,
a model or a critic. The functions still save. Imported by the worker scripts the tests write to tmp and
by the sitecustomize a TrainJob's nodes load (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mem1_core import models
from mem1_core.rl import checkpoint, value


def _recording(writes: list[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        writes.append(name)
        return fn(*args, **kwargs)

    return wrapper


def record_writes() -> list[str]:
    """Wrap checkpoint.save, models.save_model and Critic.save in this process; returns the list each
    call appends its name to."""
    writes: list[str] = []
    checkpoint.save = _recording(writes, "checkpoint.save", checkpoint.save)
    models.save_model = _recording(writes, "models.save_model", models.save_model)
    value.Critic.save = _recording(writes, "Critic.save", value.Critic.save)
    return writes
