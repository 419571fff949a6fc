"""Benchmarks of the evaluator's own work (`python -m evaluator bench ...`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Standard deviation over mean; 0 for fewer than two values."""
    return statistics.pstdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0
