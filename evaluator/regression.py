"""Does an accepted candidate still hold? Its fresh results on the fixed default trace against its baseline."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluator.status import Status

BALANCEDNESS_TOLERANCE = 1e-6  # the default trace is fixed, so balancedness is exact up to float rounding
# A speedup counts as fallen only when even the top of this run's 95% intervals lies this far below the bottom of
# the baseline's. On a GPU, whose lane has a core of its own, evaluations on other days and hosts differ by up to
# about a tenth beyond what their intervals state. On a CPU the candidate shares the machine, and other load slows
# vectorised work more than the seed's Python loops, which the yardstick follows: on a 2-core machine with one core
# kept busy, the seed patch's speedup fell from 82 to 44-52 (2026-12-06).
SPEED_TOLERANCE = {"cuda": 0.15, "cpu": 0.5}


@dataclass(frozen=True)
class Verdict:
    candidate_id: str
    name: str | None
    holds: bool
    reasons: tuple[str, ...]  # why it does not hold, or why speed was not compared
    status: str
    balancedness: float | None
    baseline_balancedness: float
    speedup: float | None  # the median of this run's evaluations
    speedup_interval: tuple[float, float] | None  # from the lowest of their intervals' bottoms to the highest top
    baseline_speedup: float
    baseline_interval: tuple[float, float]


def speed_tolerance(device: object) -> float:
    """How far below its baseline's interval a speedup measured on `device` may fall before it counts."""
    return SPEED_TOLERANCE.get(device, max(SPEED_TOLERANCE.values())) if isinstance(device, str) else max(
        SPEED_TOLERANCE.values())


def interval_of(result: dict[str, Any]) -> tuple[float, float]:
    """A result's 95% interval of its speedup; a result without one (from before intervals) is its speedup alone."""
    interval = result.get("speedup_interval")
    if (isinstance(interval, list) and len(interval) == 2
            and all(isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in interval)):
        return float(interval[0]), float(interval[1])
    return float(result["speedup"]), float(result["speedup"])


def judge(candidate_id: str, name: str | None, baseline: dict[str, Any], results: Sequence[dict[str, Any]],
          tolerance: float | None = None) -> Verdict:
    """Compare this run's results of one candidate with its baseline result, allowing `tolerance` (by default the
    device's, `SPEED_TOLERANCE`)."""
    tolerance = speed_tolerance(baseline.get("device")) if tolerance is None else tolerance
    base_interval = interval_of(baseline)
    failed = next((r for r in results if r["status"] != Status.OK), None)
    if failed is not None:
        return Verdict(candidate_id, name, False, (f"{failed['status']}: {failed['error']}",), failed["status"], None,
                       baseline["balancedness_score"], None, None, baseline["speedup"], base_interval)
    reasons = []
    balancedness = results[0]["balancedness_score"]
    if any(abs(r["balancedness_score"] - baseline["balancedness_score"]) > BALANCEDNESS_TOLERANCE for r in results):
        reasons.append(f"balancedness is {balancedness:.9f}, the baseline {baseline['balancedness_score']:.9f} "
                       f"(tolerance {BALANCEDNESS_TOLERANCE:g})")
    speedup = statistics.median(r["speedup"] for r in results)
    intervals = [interval_of(r) for r in results]
    run_interval = (min(low for low, _ in intervals), max(high for _, high in intervals))
    holds = not reasons
    same_card = all((r["device"], r["card"]) == (baseline.get("device"), baseline.get("card")) for r in results)
    if not same_card:
        reasons.append(f"speed not compared: the baseline was measured on {baseline.get('device')} "
                       f"({baseline.get('card')}), this run on {results[0]['device']} ({results[0]['card']})")
    elif run_interval[1] < base_interval[0] * (1 - tolerance):
        holds = False
        reasons.append(f"speedup fell from {baseline['speedup']:.2f}x (95% interval {base_interval[0]:.2f} to "
                       f"{base_interval[1]:.2f}) to {speedup:.2f}x (interval {run_interval[0]:.2f} to "
                       f"{run_interval[1]:.2f}): the top of this run's interval is more than {tolerance:.0%} below "
                       "the bottom of the baseline's")
    return Verdict(candidate_id, name, holds, tuple(reasons), Status.OK.value, balancedness,
                   baseline["balancedness_score"], speedup, run_interval, baseline["speedup"], base_interval)
