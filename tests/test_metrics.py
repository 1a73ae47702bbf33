"""Per-trajectory EM/F1 (mean and summed), peak tokens, dependency length, and their summary."""

from __future__ import annotations

import json

import pytest

from mem1_core.agent.types import Trajectory, Turn
from mem1_core.eval.metrics import PER_TRAJECTORY, annotate, dependency, summarize, trajectory_metrics


def _traj(turns: list[tuple[int, int]], predictions: list[str], gold: list[list[str]], **kw) -> Trajectory:
    """A trajectory whose turns have the given (context length, output length)."""
    t = Trajectory(task_id="t", mode="mem1", n_objectives=len(gold), prompt_len=turns[0][0], **kw)
    t.turns = [Turn(list(range(c)), list(range(o)), "x") for c, o in turns]
    t.predictions, t.gold = predictions, gold
    return t


def test_dependency_length_by_hand() -> None:
    # turn 1: 10 context tokens, writes 4: each sees 10 + its causal prefix -> (10 + 4/2) * 4 = 48
    # turn 2: 20 context tokens, writes 2: (20 + 1) * 2 = 42
    traj = _traj([(10, 4), (20, 2)], ["a"], [["a"]])
    assert dependency(traj) == (90.0, 6)
    m = trajectory_metrics(traj)
    assert m["dependency_length"] == pytest.approx(15.0)
    assert m["dependency_total"] == 90.0 and m["generated_tokens"] == 6.0
    assert m["peak_tokens"] == 22.0  # largest context + that turn's output
    assert m["turns"] == 2.0


def test_em_f1_mean_and_sum_with_official_normalisation() -> None:
    traj = _traj([(5, 1)], ["The Paris!", "1999", "New York City"], [["paris"], ["2000"], ["New York"]])
    m = trajectory_metrics(traj)
    assert m["em_sum"] == 1.0 and m["em"] == pytest.approx(1 / 3)
    f1_ny = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert m["f1_sum"] == pytest.approx(1 + 0 + f1_ny)
    assert m["f1"] == pytest.approx((1 + f1_ny) / 3)


def test_missing_answers_score_zero_and_extra_ones_are_ignored() -> None:
    assert trajectory_metrics(_traj([(5, 1)], ["a"], [["a"], ["b"]]))["em_sum"] == 1.0
    assert trajectory_metrics(_traj([(5, 1)], ["a", "b", "c"], [["a"], ["b"]]))["em"] == 1.0
    assert trajectory_metrics(_traj([(5, 1)], [], [["a"]]))["em"] == 0.0
    # an empty answer never matches, even a gold answer that normalises to nothing
    assert trajectory_metrics(_traj([(5, 1)], [""], [["the"]]))["em"] == 0.0


def test_summary_means_and_extremes() -> None:
    a = _traj([(10, 2)], ["x"], [["x"]], seconds=1.0, reward=1.0)
    b = _traj([(30, 4), (8, 2)], ["y"], [["x"]], seconds=3.0, format_error="no closed action tag")
    s = summarize([a, b])
    assert set(PER_TRAJECTORY) <= set(s)
    assert s["em"] == 0.5 and s["reward"] == 0.5 and s["format_error"] == 0.5
    assert s["peak_tokens"] == (12 + 34) / 2 and s["peak_tokens_max"] == 34
    assert s["seconds"] == 2.0 and s["seconds_total"] == 4.0 and s["n_trajectories"] == 2
    with pytest.raises(ValueError, match="at least one trajectory"):
        summarize([])


def test_annotate_keeps_metrics_on_the_record() -> None:
    traj = annotate([_traj([(4, 2)], ["x"], [["x"]])])[0]
    again = Trajectory.from_dict(json.loads(traj.to_json()))
    assert again.metrics["em"] == 1.0 and again.metrics["peak_tokens"] == 6.0
