"""How a benchmark says it measured everything but missed the target it checks."""

from __future__ import annotations


class BarMissed(AssertionError):
    """The numbers are real and must be kept; the run must still fail.

    An AssertionError, so running a bench file directly still exits non-zero; run_all records
    `results` in all.json and MLflow before reporting the failure.
    """

    def __init__(self, message: str, results: dict[str, float]) -> None:
        super().__init__(message)
        self.results = results
