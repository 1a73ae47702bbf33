"""bench.run_all: a missed bar keeps its numbers, and one benchmark's run keeps the others' in all.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.bar import BarMissed
from bench.run_all import merge_results, reports_of, run_benches


def _measures(results_dir: Path) -> dict[str, float]:
    return {"tokens_per_s": 12.5}


def _misses(results_dir: Path) -> dict[str, float]:
    raise BarMissed("EM 0 vs 0: the bar does not hold", {"em": 0.0, "p": 1.0})


def _crashes(results_dir: Path) -> dict[str, float]:
    raise RuntimeError("out of memory")


def _not_numbers(results_dir: Path) -> object:
    return {"device": "cpu"}


def _misses_with_bad_numbers(results_dir: Path) -> dict[str, float]:
    raise BarMissed("missed", {"em": "n/a"})  # type: ignore[dict-item]


MAINS = {
    "good": _measures,
    "missed": _misses,
    "crash": _crashes,
    "bad": _not_numbers,
    "bad_missed": _misses_with_bad_numbers,
    "last": _measures,
}


def test_a_missed_bar_keeps_its_numbers_and_fails_the_run(tmp_path: Path, capsys) -> None:
    results, failed = run_benches(list(MAINS), tmp_path, load=MAINS.__getitem__)
    # a broken benchmark never stops the ones after it
    assert results == {
        "good": {"tokens_per_s": 12.5},
        "missed": {"em": 0.0, "p": 1.0},
        "last": {"tokens_per_s": 12.5},
    }
    assert failed == ["missed", "crash", "bad", "bad_missed"]
    err = capsys.readouterr().err
    assert "bar missed (numbers kept): EM 0 vs 0" in err and "out of memory" in err
    assert "bench/bench_bad.py: main() returned non-numeric values for ['device']" in err
    assert "bench/bench_bad_missed.py: main() returned non-numeric values for ['em']" in err


def test_running_one_benchmark_keeps_the_others_numbers(tmp_path: Path) -> None:
    path = tmp_path / "all.json"
    merge_results(path, {"memory": {"peak": 300.0}, "learning": {"em": 0.1}})
    merged = merge_results(path, {"learning": {"em": 0.2}})
    assert merged == {"memory": {"peak": 300.0}, "learning": {"em": 0.2}}
    assert json.loads(path.read_text(encoding="utf-8")) == merged


def test_an_unreadable_all_json_is_named_and_replaced(tmp_path: Path, capsys) -> None:
    path = tmp_path / "all.json"
    path.write_text("{not json", encoding="utf-8")
    assert merge_results(path, {"a": {"x": 1.0}}) == {"a": {"x": 1.0}}
    assert f"{path}: not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[1, 2]", '"text"'])
def test_an_all_json_that_is_not_an_object_is_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "all.json"
    path.write_text(content, encoding="utf-8")
    assert merge_results(path, {"a": {"x": 1.0}}) == {"a": {"x": 1.0}}


def test_a_benchmark_logs_the_reports_and_plots_it_wrote_this_run(tmp_path: Path) -> None:
    old = tmp_path / "retrieval_full.md"  # a full run's report, from an earlier run
    old.write_text("old")
    os.utime(old, (1.0, 1.0))
    since = time.time() - 1
    for name in (
        "retrieval.md",
        "retrieval_load.md",
        "learning.md",
        "learning_curve_grpo_s0.png",
        "notes.txt",
    ):
        (tmp_path / name).write_text("x")
    benches = ["learning", "retrieval", "retrieval_load"]
    assert [p.name for p in reports_of("retrieval", tmp_path, since, benches)] == ["retrieval.md"]
    assert [p.name for p in reports_of("retrieval", tmp_path, 0.0, benches)] == [
        "retrieval.md",
        "retrieval_full.md",
    ]
    assert [p.name for p in reports_of("learning", tmp_path, since, benches)] == [
        "learning.md",
        "learning_curve_grpo_s0.png",
    ]
