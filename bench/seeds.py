"""Training seeds side by side: the learning benches run one seed per process and share out the cores."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def side_by_side(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """`fn(*call, threads=T)` for every call, in spawned processes (torch and fork do not mix), at most
    one per core, with T = cores per process: on 2 shared cores two single-thread processes train a
    model this small faster than one two-thread process. Results in the order of `calls`."""
    workers = max(1, min(len(calls), os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *call, threads=threads) for call in calls]
        return [f.result() for f in futures]
