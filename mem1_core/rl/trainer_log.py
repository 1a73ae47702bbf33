"""The steps' log function type, and a forwarder of a transformers Trainer's logs to one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

LogFn = Callable[[dict[str, float], int], None]


def log_callback(log: LogFn, prefix: str) -> Any:
    """A TrainerCallback that sends finite numeric logs as `{prefix}/{key}`; under torchrun, rank 0 only."""
    # lazy: LogFn is imported by light modules (components/launch.py); transformers' Trainer stack only
    # when a callback is built
    from transformers import TrainerCallback

    class _Forward(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            metrics = {
                f"{prefix}/{k}": float(v)
                for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            }
            if metrics:
                log(metrics, int(state.global_step))

    return _Forward()
