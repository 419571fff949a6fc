"""What a program whose clock lies gains, at each speed.

A program can reach the worker's clock through its caller's frame (the worker's batch loop) and make every batch claim
a microsecond. The evaluator then times each batch at its round trip less the harness's expected time, its model
scaled by the run's probes (evaluation.md, step 8), so the lie gains what that expectation is off by, a share of the
harness that is larger the faster the program: the harness's part per call (each call's inputs and outputs copied) is
the same however calls are batched. Each speed class's program, honest and lying, `copies` times each, shuffled
through one evaluator on the default trace. Per class: the median speedup of each, the gain (the lying copies' over
the honest ones'), the share of the lying copies' batches that were doubted (near all of them, or the lie did not
take), the harness per call, as the honest copies' round trips less their time and as expected, and the largest
excess of an honest copy (its batches' harness over the expected, in the median: its claims are doubted as a whole
above `HARNESS_TOLERANCE` over 1). The seed's reference comes from the cache, as `evaluate`'s does.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluator.bench.speed_classes import SPEED_CLASSES, SpeedClass
from evaluator.eplb.default_trace import default_trace
from evaluator.evaluation import Evaluator, Result, Settings

# Appended to a program that defines `rebalance_experts`: from its first call on, each stamp of the worker's clock is a
# microsecond after the last, so each batch claims a microsecond.
LYING_CLOCK = '''

import sys as _sys
import time as _time

_honest_rebalance_experts = rebalance_experts
_claimed_ns = []


def _a_microsecond_later():
    _claimed_ns[0] += 1000
    return _claimed_ns[0]


def rebalance_experts(weight, *args):
    if not _claimed_ns:
        _claimed_ns.append(_time.perf_counter_ns())
        _sys._getframe(1).f_locals["self"].now = _a_microsecond_later
    return _honest_rebalance_experts(weight, *args)
'''


def with_a_lying_clock(source: str) -> str:
    """`source`, a program defining `rebalance_experts`, with the worker's clock made to claim a microsecond for each
    batch from its first call on."""
    return source + LYING_CLOCK


@dataclass(frozen=True)
class ClockFigures:
    name: str
    about_ms: float
    honest_speedup: float  # the median over the honest copies
    lying_speedup: float  # the same over the lying copies
    gain: float  # lying_speedup over honest_speedup
    doubted: float  # the share of the lying copies' batches timed at their round trip, not at their claim
    harness_ms: float  # per call, the median over the honest copies of their round trip less their time
    expected_ms: float  # per call, the median over the honest copies of the harness's expected time
    honest_excess: float  # the largest over the honest copies of their harness over the expected, in the median
    failed: int  # evaluations not ok, of either kind


@dataclass(frozen=True)
class ClockBenchResult:
    device: str
    card: str
    torch_version: str
    copies: int
    classes: list[ClockFigures]
    seconds: float


def measure(copies: int = 3, device: str = "auto", names: Sequence[str] = (),
            settings: Settings | None = None) -> ClockBenchResult:
    """`copies` of each speed class's program (those `names`, else all), honest and lying, shuffled through one
    evaluator. Raises RuntimeError where every evaluation of a class's program of either kind failed."""
    started = time.perf_counter()
    speeds = [speed for speed in SPEED_CLASSES if not names or speed.name in names]
    with tempfile.TemporaryDirectory(prefix="eplb-bench-clock-") as folder:
        programs = {}
        for speed in speeds:
            source = speed.source()
            programs[speed.name, False] = _written(Path(folder) / f"{speed.name}.py", source)
            programs[speed.name, True] = _written(Path(folder) / f"{speed.name}-lying.py", with_a_lying_clock(source))
        jobs = [key for key in programs for _ in range(copies)]
        jobs = [jobs[i] for i in np.random.default_rng().permutation(len(jobs))]
        with Evaluator(default_trace(), settings or Settings(), device=device) as evaluator:
            results = [(key, evaluator.evaluate(programs[key])) for key in jobs]
    figures = [_figures(speed, [(lying, result) for (name, lying), result in results if name == speed.name])
               for speed in speeds]
    first = next(result for _, result in results if result.ok)
    return ClockBenchResult(first.device, first.card, torch.__version__, copies, figures,
                            time.perf_counter() - started)


def _written(path: Path, source: str) -> Path:
    path.write_text(source, encoding="utf-8")
    return path


def _figures(speed: SpeedClass, results: list[tuple[bool, Result]]) -> ClockFigures:
    honest = [result for lying, result in results if not lying and result.ok]
    lying = [result for lying, result in results if lying and result.ok]
    for kind, ok in (("honest", honest), ("lying", lying)):
        if not ok:
            failed = next(result for is_lying, result in results if is_lying == (kind == "lying"))
            raise RuntimeError(f"every {kind} evaluation of {speed.name} failed: {failed.status}: {failed.error}")
    honest_speedup = statistics.median(result.speedup for result in honest)
    lying_speedup = statistics.median(result.speedup for result in lying)
    doubted = sum(result.timing["claims_doubted"] for result in lying) / sum(result.timing["batches"]
                                                                             for result in lying)
    harness_ms = statistics.median(result.timing["round_trip_ms"] - result.timing["summary"]["median_ms"]
                                   for result in honest)
    expected_ms = statistics.median(result.timing["harness_ms"] for result in honest)
    return ClockFigures(speed.name, speed.about_ms, honest_speedup, lying_speedup, lying_speedup / honest_speedup,
                        doubted, harness_ms, expected_ms, max(result.timing["harness_excess"] for result in honest),
                        len(results) - len(honest) - len(lying))
