"""What the KFP UI shows for a step: the register step's markdown, the evaluation's HTML page."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def registration_markdown(result: dict[str, Any]) -> str:
    """The register step's report for the KFP UI."""
    lines = ["| field | value |", "|---|---|"]
    for key in (
        "model_name",
        "version",
        "model_uri",
        "promoted",
        "gate_reason",
        "candidate_score",
        "champion_score",
    ):
        lines.append(f"| {key} | {result.get(key)} |")
    return "\n".join(lines) + "\n"


def html_report(title: str, markdown_table: str, images: list[Path]) -> str:
    """A self-contained HTML page (PNG plots inlined) for the KFP UI's HTML visualisation."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1><pre>{html.escape(markdown_table)}</pre>")
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(img.name)}</h3><img src='data:image/png;base64,{data}'/>")
    parts.append("</body></html>")
    return "\n".join(parts)
