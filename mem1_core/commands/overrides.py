"""`--set KEY=VALUE` parsing and config loading shared by the subcommands (not a subcommand itself)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mem1_core.config import ConfigError, PipelineConfig, load_config


def parse_assignments(items: list[str], what: str = "--set", form: str = "KEY=VALUE") -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse (numbers, lists, booleans), else strings.

    `what` and `form` name the option and its syntax in the error for a malformed item.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected {form}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline config from `--config` and `--set`; a malformed `--set` is a ConfigError."""
    try:
        overrides = parse_assignments(args.set)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return load_config(args.config, overrides)
