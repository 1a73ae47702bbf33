"""SQuAD / HotpotQA answer normalisation and scores, checked on the official scripts' behaviour."""

from __future__ import annotations

import pytest

from mem1_core.protocol.scoring import exact_match, f1, normalize_answer


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat,  an apple ", "cat apple"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("", ""),
        ("Chief of Protocol", "chief of protocol"),
        ("the-the", "thethe"),  # punctuation goes before articles
    ],
)
def test_normalize_answer(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_exact_match_takes_best_gold() -> None:
    assert exact_match("december 1972", ["14 December 1972 UTC", "December 1972"]) == 1.0
    assert exact_match("1972", ["14 December 1972 UTC", "December 1972"]) == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1_token_overlap() -> None:
    # pred {new, york, city} vs gold {new, york}: p=2/3, r=1 -> 0.8
    assert f1("New York City", ["new york"]) == pytest.approx(0.8)
    assert f1("Paris", ["London", "paris"]) == 1.0
    assert f1("", ["x"]) == 0.0
    assert f1("x", []) == 0.0


def test_hotpot_yes_no_special_case() -> None:
    assert f1("yes", ["no"]) == 0.0
    assert f1("yes it is", ["yes"]) == 0.0  # gold yes/no needs an exact match
    assert f1("no", ["no way"]) == 0.0
    assert f1("Yes.", ["yes"]) == 1.0
    assert f1("noanswer", ["noanswer"]) == 1.0
