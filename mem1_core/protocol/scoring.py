"""Answer scoring exactly as the official SQuAD / HotpotQA evaluation scripts do it.

Numbers must be comparable with published EM/F1, so the normalisation (lower-case, strip ASCII
punctuation, drop the articles a/an/the, collapse whitespace) and HotpotQA's yes/no/noanswer rule
are copied, not improved.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse whitespace (SQuAD order)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1_single(prediction: str, gold: str) -> float:
    pred_norm, gold_norm = normalize_answer(prediction), normalize_answer(gold)
    # HotpotQA: a yes/no/noanswer answer scores only if it matches exactly.
    if pred_norm in _SPECIAL and pred_norm != gold_norm:
        return 0.0
    if gold_norm in _SPECIAL and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1(prediction: str, golds: Iterable[str]) -> float:
    """Token-level F1, the maximum over the gold answers (0.0 when there are none)."""
    return max((_f1_single(prediction, g) for g in golds), default=0.0)
