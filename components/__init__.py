"""One thin KFP v2 lightweight component per pipeline step.

The step functions live in plain modules (prepare, compose, sft, ppo, eval, register, record,
finish); a step's function, its KFP task and its nested MLflow run are named as its config section and
its `mem1` subcommand. `build(images)` wraps them as components in the project's images. Wrapping
happens at compile time rather than import time so the image registry and tag are a compile-time choice.
Every component runs with install_kfp_package=False: the images already hold kfp and the project,
so nothing is pip-installed when a step starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.images import Images


@dataclass(frozen=True)
class Components:
    prepare_run: Any
    compose: Any
    record_step: Any
    sft: Any
    ppo: Any
    eval: Any
    register: Any
    finish_run: Any


def build(images: Images | None = None) -> Components:
    """The components, CPU steps in the base image and GPU steps in the trainer image."""
    # lazy: kfp (~1 s) only to wrap the steps at compile time; a step's pod imports this package first
    from kfp import dsl

    from components.compose import compose
    from components.eval import eval
    from components.finish import finish_run
    from components.ppo import ppo
    from components.prepare import prepare_run
    from components.record import record_step
    from components.register import register
    from components.sft import sft

    images = images or Images.from_env()

    def wrap(fn: Any, image: str) -> Any:
        return dsl.component(fn, base_image=image, install_kfp_package=False)

    return Components(
        prepare_run=wrap(prepare_run, images.base),
        compose=wrap(compose, images.base),
        record_step=wrap(record_step, images.base),
        sft=wrap(sft, images.trainer),
        ppo=wrap(ppo, images.trainer),
        eval=wrap(eval, images.trainer),
        register=wrap(register, images.base),
        finish_run=wrap(finish_run, images.base),
    )
