"""The input-dependence check: plans made on inputs near the trace's windows must balance as well as the windows'
own plans, or the program did not plan on its input (a cached or stale plan, a table looked up from a known trace).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from evaluator.eplb.invariants import Violation

# How sure the check must be that the average gap exceeds the tolerance: honest plans for nearby inputs differ by
# chance (one variant's gap spreads by 0.009 on the default trace, 0.027 on a problem of 4 layers), and the
# average of a few such gaps, on a short trace, would otherwise exceed the tolerance now and then.
STANDARD_ERRORS = 2.0
# The gaps' spread counts for at most this many times an honest program's (the seed's): a program fresh on some
# variants and stale on others spreads its gaps wide, and would widen the standard error that excuses it.
SPREAD_CAP = 2.0


def input_dependence(gaps: Sequence[float], tolerance: float,
                     honest_spread: Callable[[], float]) -> Violation | None:
    """A violation when `gaps` (per variant: its window's plan's balancedness on the next window less the
    variant's plan's) exceed `tolerance` on average by more than `STANDARD_ERRORS` standard errors of the
    average, their spread taken as at most `SPREAD_CAP` times `honest_spread()` (one honest variant's standard
    deviation, asked for only when the average is over the tolerance); None when they do not, or there are none."""
    if not gaps:
        return None
    gap = statistics.fmean(gaps)
    if gap <= tolerance:  # no spread can tell against an average within the tolerance
        return None
    spread = min(statistics.stdev(gaps), SPREAD_CAP * honest_spread()) if len(gaps) > 1 else 0.0
    error = spread / math.sqrt(len(gaps))
    if gap - STANDARD_ERRORS * error <= tolerance:
        return None
    return Violation("plan.input_dependence", None,
                     f"plans for fresh inputs near the trace's windows balance the next window {gap:.3f} worse "
                     f"(standard error {error:.3f} over {len(gaps)} inputs) than plans for the windows themselves "
                     f"(tolerance {tolerance}); the plan must be computed from the input it is given, not cached, "
                     "stale or looked up")
