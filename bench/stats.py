"""One-sided significance tests for the learning benches (a few lines each rather than scipy, which is
not a dependency of this project)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def fisher_greater(k1: int, n1: int, k0: int, n0: int) -> float:
    """One-sided Fisher exact p-value that k1/n1 exceeds k0/n0 (P[X >= k1], X hypergeometric)."""
    total, drawn_from = k1 + k0, n1 + n0

    def pmf(x: int) -> float:
        return math.comb(total, x) * math.comb(drawn_from - total, n1 - x) / math.comb(drawn_from, n1)

    return sum(pmf(x) for x in range(k1, min(total, n1) + 1))


def paired_greater(a: Sequence[float], b: Sequence[float], n_resamples: int = 20_000, seed: int = 0) -> float:
    """One-sided paired sign-flip permutation p-value that mean(a) > mean(b) on the same tasks.

    Exact (all 2^n sign patterns) up to 16 pairs, else Monte Carlo with `n_resamples` draws; the
    observed pattern is counted, so p is never 0."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_greater needs two equal, non-empty lists, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    observed = sum(diffs) - 1e-12  # ties with the observed sum count as "at least as large"
    n = len(diffs)
    if n <= 16:
        hits = sum(
            sum(d if (mask >> i) & 1 else -d for i, d in enumerate(diffs)) >= observed for mask in range(2**n)
        )
        return hits / 2**n
    rng = random.Random(seed)
    hits = 1 + sum(
        sum(d if rng.random() < 0.5 else -d for d in diffs) >= observed for _ in range(n_resamples)
    )
    return hits / (n_resamples + 1)


def mean(xs: Sequence[float]) -> float:
    """The mean, 0 for no values (a model scored on no task of a count)."""
    return sum(xs) / len(xs) if xs else 0.0
