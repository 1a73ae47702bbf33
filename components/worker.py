"""The command every training worker runs (`torchrun -m mem1_core.cli sft|ppo ...`) and its config file.

Shared by the single-node torchrun launch (components.launch) and the multi-node jobs
(components.trainjob), so both run the very same worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DEEPSPEED_CONFIG = "configs/deepspeed_zero3.json"  # relative to the images' WORKDIR (/app)


def step_command(
    kind: str, config_path: Path, data_dir: Path, model_dir: Path | None, out_dir: Path
) -> list[str]:
    """`mem1 sft|ppo` as a torchrun module; the trained model lands in OUT/model (the CLI's layout).

    Multi-GPU workers use the step's own `deepspeed_config` when it names one, else ZeRO-3, for SFT
    and PPO alike.
    """
    args = ["-m", "mem1_core.cli", kind, "--config", str(config_path), "--data-dir", str(data_dir)]
    if model_dir is not None:
        args += ["--model", str(model_dir)]
    args += ["--out", str(out_dir)]
    section = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get(kind) or {}
    if not section.get("deepspeed_config"):
        args += ["--set", f"{kind}.deepspeed_config={DEEPSPEED_CONFIG}"]
    return args


def write_step_config(kind: str, section: str, path: Path) -> Path:
    """A pipeline config YAML holding only this step's section, for `mem1 <step> --config`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({kind: json.loads(section)}, sort_keys=True), encoding="utf-8")
    return path
