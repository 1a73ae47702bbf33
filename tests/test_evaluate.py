"""Evaluation grid on tiny assets: files written, rows per cell, skipped counts, plots are real PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from mlflow_server import make_data_dir, make_model_dir

from mem1_core.config import AgentConfig, EvalConfig
from mem1_core.eval import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(
        tmp_path_factory.mktemp("eval-data") / "data", eval_objectives=(1, 2, 4), n_eval_tasks=3
    )


def check_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(raw) > 10_000, f"{path} is suspiciously small ({len(raw)} bytes)"
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    rgb = img[..., :3]
    assert float(np.std(rgb)) > 0.05, "the image is (nearly) blank"
    # curves are drawn in colour: a fair number of pixels are neither grey nor white
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3
    assert saturated.sum() > 200, "no coloured curves found"


def test_grid_on_tiny_model(data_dir: Path, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "model", data_dir, seed=0)
    cfg = EvalConfig(
        agent=AgentConfig(temperature=0.0, max_new_tokens=12, max_turns=3, batch_size=8),
        objectives=[1, 2, 3, 4],
        modes=["mem1", "full", "truncate:1"],
        n_tasks_per_objective=2,
    )
    result = evaluate.run(cfg, data_dir, model_dir, tmp_path / "eval")
    assert [s["objectives"] for s in result.skipped] == [3], "3 objectives are not in the eval set"
    assert "no 3-objective tasks" in result.skipped[0]["reason"]
    assert {(r["objectives"], r["mode"]) for r in result.rows} == {
        (n, m) for n in (1, 2, 4) for m in ("mem1", "full", "truncate:1")
    }
    for row in result.rows:
        assert row["n_tasks"] == 2
        assert 0.0 <= row["em"] <= 1.0 and 0.0 <= row["em_sum"] <= row["objectives"]
        assert row["peak_tokens"] > 0 and row["dependency_length"] > 0 and row["seconds"] > 0

    out = tmp_path / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["grid"] == json.loads(json.dumps(result.rows))
    assert metrics["dataset_hash"] == json.loads((data_dir / "manifest.json").read_text())["dataset_hash"]
    table = (out / "table.md").read_text()
    assert table.count("\n") == 2 + len(result.rows) and "| EM (sum) |" in table
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2 and "no 3-objective tasks" in report
    samples = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * len(result.rows) and all(s["turns"] for s in samples)
    for name in ("em_vs_objectives", "peak_tokens_vs_objectives"):
        check_png(out / f"{name}.png")


def test_grid_with_oracle_shows_mem1_memory_flat(data_dir: Path, tmp_path: Path) -> None:
    """The scripted oracle solves tasks; its MEM1 peak context stays below full context as tasks grow."""
    cfg = EvalConfig(
        agent=AgentConfig(temperature=0.0, max_new_tokens=96),
        objectives=[1, 4],
        modes=["mem1", "full"],
        n_tasks_per_objective=3,
    )
    result = evaluate.run(cfg, data_dir, "oracle", tmp_path / "eval")
    mem1_4, full_4 = result.row(4, "mem1"), result.row(4, "full")
    mem1_1 = result.row(1, "mem1")
    assert mem1_4 and full_4 and mem1_1
    assert mem1_1["em"] > 0.5 and mem1_4["em"] > 0.5, "the oracle answers most sub-questions"
    assert full_4["peak_tokens"] > 1.5 * mem1_4["peak_tokens"]
    check_png(tmp_path / "eval" / "peak_tokens_vs_objectives.png")


def test_no_requested_objective_count_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(objectives=[16], modes=["mem1"], n_tasks_per_objective=1)
    with pytest.raises(ValueError, match="has none of the objective counts"):
        evaluate.run(cfg, data_dir, "oracle", tmp_path / "eval")
