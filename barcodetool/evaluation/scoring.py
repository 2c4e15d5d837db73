"""The benchmark's scores: accuracy, assignment rate and precision, throughput, the harmonic mean of tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction right; an empty prediction is wrong. Queries with an empty true label are left out."""
    pairs = [(t, p) for t, p in zip(truth, predicted) if t]
    if not pairs:
        return math.nan
    return sum(1 for t, p in pairs if p == t) / len(pairs)


def assigned_and_precision(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float]:
    """(share of the queries with a true label that got a label, share of those labels that are right); NaN
    where there is nothing to count."""
    assigned = [bool(p) for p, t in zip(predicted, truth) if t]
    right = [p == t for p, t in zip(predicted, truth) if t and p]
    return (float(np.mean(assigned)) if assigned else math.nan,
            float(np.mean(right)) if right else math.nan)


def rate(seconds: float, n: int) -> float:
    """Items per second; NaN for a time of zero."""
    return n / seconds if seconds > 0 else math.nan


def harmonic_mean(values: Sequence[float]) -> float:
    values = [v for v in values]
    if not values or any(v is None or math.isnan(v) for v in values):
        return math.nan
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def named_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict:
    """Labels that may be left empty, scored: `named_right` (share of the queries with a true label named right:
    the accuracy), `named` (share named) and `precision` (share of the named that are right)."""
    named, precision = assigned_and_precision(truth, predicted)
    return {"named_right": accuracy(truth, predicted), "named": named, "precision": precision}


def named_share(predicted: Sequence[str]) -> float:
    """Share of the queries given a label (NaN for none): on `test_unseen` at species, every one is wrong."""
    return sum(1 for p in predicted if p) / len(predicted) if predicted else math.nan
