"""Does an accepted candidate still hold? Its fresh results on the fixed default trace against its baseline."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluator.bench import coefficient_of_variation

BALANCEDNESS_TOLERANCE = 1e-6  # the default trace is fixed, so balancedness is exact up to float rounding
# A speedup may drop by at least this fraction before it counts: evaluating one candidate again in fresh
# processes moved its speedup by 7% to 16% on an H100 (docs/benchmarks.md) and by up to 27% between two
# evaluations in one run on a 2-core CPU machine, and a baseline is one evaluation from an earlier run.
MIN_SPEED_TOLERANCE = 0.5
NOISE_MULTIPLE = 3


@dataclass(frozen=True)
class Verdict:
    candidate_id: str
    name: str | None
    holds: bool
    reasons: tuple[str, ...]  # why it does not hold, or why speed was not compared
    status: str
    balancedness: float | None
    baseline_balancedness: float
    speedup: float | None  # mean over this run's evaluations
    baseline_speedup: float


def speed_noise(speedups_per_candidate: Sequence[Sequence[float]]) -> float:
    """The largest coefficient of variation of speedup among candidates evaluated more than once in this run."""
    return max((coefficient_of_variation(s) for s in speedups_per_candidate if len(s) > 1), default=0.0)


def speed_tolerance(noise: float) -> float:
    """How far below its baseline a speedup may fall in a run of this `noise` before it counts."""
    return max(NOISE_MULTIPLE * noise, MIN_SPEED_TOLERANCE)


def judge(candidate_id: str, name: str | None, baseline: dict[str, Any], results: Sequence[dict[str, Any]],
          tolerance: float) -> Verdict:
    """Compare this run's results of one candidate with its baseline result."""
    failed = next((r for r in results if r["status"] != "ok"), None)
    if failed is not None:
        return Verdict(candidate_id, name, False, (f"{failed['status']}: {failed['error']}",), failed["status"], None,
                       baseline["balancedness_score"], None, baseline["speedup"])
    reasons = []
    balancedness = results[0]["balancedness_score"]
    if any(abs(r["balancedness_score"] - baseline["balancedness_score"]) > BALANCEDNESS_TOLERANCE for r in results):
        reasons.append(f"balancedness is {balancedness:.9f}, the baseline {baseline['balancedness_score']:.9f} "
                       f"(tolerance {BALANCEDNESS_TOLERANCE:g})")
    speedup = statistics.fmean(r["speedup"] for r in results)
    holds = not reasons
    same_card = all((r["device"], r["card"]) == (baseline.get("device"), baseline.get("card")) for r in results)
    if not same_card:
        reasons.append(f"speed not compared: the baseline was measured on {baseline.get('device')} "
                       f"({baseline.get('card')}), this run on {results[0]['device']} ({results[0]['card']})")
    elif speedup < baseline["speedup"] * (1 - tolerance):
        holds = False
        reasons.append(f"speedup fell from {baseline['speedup']:.2f}x to {speedup:.2f}x, more than the "
                       f"tolerance of {tolerance:.0%}")
    return Verdict(candidate_id, name, holds, tuple(reasons), "ok", balancedness, baseline["balancedness_score"],
                   speedup, baseline["speedup"])
