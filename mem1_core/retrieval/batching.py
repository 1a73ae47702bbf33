"""Micro-batching of concurrent encode calls: one forward pass for every query waiting at that moment.

A server thread per request would otherwise run the encoder once per query, one at a time (the
encoder is serialised); a batch of 32 short queries costs little more than one, so under many
concurrent clients throughput grows with the queue instead of collapsing into timeouts.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from mem1_core.retrieval.encoder import TextEncoder


class BatchingEncoder:
    """Wraps a TextEncoder: `encode` from many threads; a worker encodes whatever is queued together.

    Results equal the wrapped encoder's up to float rounding of batched matmuls, so the server's
    rankings can differ from a one-at-a-time backend's only on exact score ties.
    """

    def __init__(self, encoder: TextEncoder, max_batch: int = 64) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.name = encoder.name
        self.max_batch = max_batch
        self._pending: list[tuple[list[str], Future[np.ndarray]]] = []
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="encoder-batcher", daemon=True)
        self._worker.start()

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        if len(texts) >= self.max_batch:  # already a full batch: no need to wait for company
            return self.encoder.encode(texts, batch_size)
        done: Future[np.ndarray] = Future()
        with self._cond:
            self._pending.append((texts, done))
            self._cond.notify()
        return done.result()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch, total = [], 0
                while self._pending and (not batch or total + len(self._pending[0][0]) <= self.max_batch):
                    texts, fut = self._pending.pop(0)
                    batch.append((texts, fut))
                    total += len(texts)
            try:
                vectors = self.encoder.encode([t for texts, _ in batch for t in texts])
            except Exception as e:  # every waiting caller gets the error, the worker lives on
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            start = 0
            for texts, fut in batch:
                fut.set_result(vectors[start : start + len(texts)])
                start += len(texts)
