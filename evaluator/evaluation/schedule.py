"""Which inputs a candidate is called on, and in what order.

Every call is timed and every output validated. The calls on the trace's own windows are the ones whose
plans give `balancedness_score`; the others are fresh variants of those windows (each load scaled by a small
random factor, drawn from a secret generator), so that a candidate cannot tell a scored call from a timed
one, cannot have seen a timed input before, and cannot look a variant up in a table built from a known
trace. The order is shuffled with the same secret generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VARIANT_NOISE = 0.05  # relative spread of the per-expert scale factor of a variant


@dataclass(frozen=True, eq=False)
class Call:
    weight: np.ndarray  # [L, E], the candidate plans on this
    window: int  # the trace window it is (or varies); its plan is scored on window + 1
    scored: bool  # the trace's own window: counts towards balancedness_score


def call_inputs(windows: np.ndarray) -> np.ndarray:
    """The windows as a candidate is given them: token counts stay int64, any other loads become float32."""
    return windows if windows.dtype == np.int64 else windows.astype(np.float32)


def build_schedule(windows: np.ndarray, variants_per_window: int, rng: np.random.Generator,
                   min_variants: int) -> list[Call]:
    """Calls on windows[0..n-2] (the last window is only a future) and `variants_per_window` variants of
    each, or as many more as make `min_variants` in all (none if `variants_per_window` is 0), shuffled."""
    planned = range(len(windows) - 1)
    if variants_per_window:
        variants_per_window = max(variants_per_window, math.ceil(min_variants / len(planned)))
    calls = [Call(windows[i], i, scored=True) for i in planned]
    calls += [Call(vary(windows[i], rng), i, scored=False) for i in planned for _ in range(variants_per_window)]
    return [calls[i] for i in rng.permutation(len(calls))]


def warmup_call(windows: np.ndarray, rng: np.random.Generator) -> Call:
    """A variant of a random planned window, to be neither timed nor scored: it absorbs first-call costs
    (allocator, kernel loading, caches) and lets the device's clocks rise."""
    window = int(rng.integers(0, len(windows) - 1))
    return Call(vary(windows[window], rng), window, scored=False)


def vary(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible new input near `weight`: each load scaled by its own factor, integers kept integers."""
    varied = weight * rng.lognormal(0.0, VARIANT_NOISE, size=weight.shape)
    if np.issubdtype(weight.dtype, np.integer):
        return np.rint(varied).astype(weight.dtype)
    return varied.astype(weight.dtype)
