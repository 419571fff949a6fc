"""Benchmarks of the evaluator's own work (`python -m evaluator bench ...`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluator.evaluation.backend import CandidateEvaluator
    from evaluator.evaluation.result import Result


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Standard deviation over mean; 0 for fewer than two values."""
    return statistics.pstdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def require_ok(result: Result) -> Result:
    """`result`, if the benchmark's candidate passed; a RuntimeError naming its failure otherwise."""
    if not result.ok:
        raise RuntimeError(f"the benchmark's candidate failed its evaluation ({result.status}): {result.error}")
    return result


def timed_evaluations(evaluator: CandidateEvaluator, program: Path, candidates: int,
                      threads: int) -> tuple[float, list[Result]]:
    """`candidates` evaluations of `program`, submitted from `threads` threads (at most that many at once): the
    seconds they take, and their results. Raises RuntimeError if one is not `ok`."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: evaluator.evaluate(program), range(candidates)))
    seconds = time.perf_counter() - started
    for result in results:
        require_ok(result)
    return seconds, results
