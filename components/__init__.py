"""One thin KFP v2 lightweight component per pipeline step.

The step functions live in plain modules (prepare, compose, sft, ppo, evaluate, register, record,
finish); `build(images)` wraps them as components in the project's images. Wrapping happens at
compile time rather than import time so the image registry and tag are a compile-time choice.
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
    compose_dataset: Any
    record_step: Any
    sft_warmup: Any
    ppo_train: Any
    evaluate: Any
    register_model: Any
    finish_run: Any


def build(images: Images | None = None) -> Components:
    """The components, CPU steps in the base image and GPU steps in the trainer image."""
    from kfp import dsl

    from components.compose import compose_dataset
    from components.evaluate import evaluate
    from components.finish import finish_run
    from components.ppo import ppo_train
    from components.prepare import prepare_run
    from components.record import record_step
    from components.register import register_model
    from components.sft import sft_warmup

    images = images or Images.from_env()

    def wrap(fn: Any, image: str) -> Any:
        return dsl.component(fn, base_image=image, install_kfp_package=False)

    return Components(
        prepare_run=wrap(prepare_run, images.base),
        compose_dataset=wrap(compose_dataset, images.base),
        record_step=wrap(record_step, images.base),
        sft_warmup=wrap(sft_warmup, images.trainer),
        ppo_train=wrap(ppo_train, images.trainer),
        evaluate=wrap(evaluate, images.trainer),
        register_model=wrap(register_model, images.base),
        finish_run=wrap(finish_run, images.base),
    )
