"""Which inputs a candidate is called on, in which batches, in what order.

Every call is timed and every output validated. The calls on the trace's own windows give `balancedness_score`;
the others are fresh variants of those windows: each load scaled by a small random factor from a secret generator,
then the layer's tokens dealt out again in those proportions, so that every layer carries exactly the tokens it
carried in the window (a trace's windows carry the same number in every layer, and so does each variant). A candidate
cannot tell a scored call from a timed one by its sums, cannot have seen a timed input before, and cannot look a
variant up in a table built from a known trace.

A batch holds calls on one window only (the window itself among variants of it, or variants alone), in a secret
order: the candidate never sees a later window within a batch, so no plan of it can be changed with foresight before
the batch's outputs are taken. The batches of each window come in pairs, one that holds the window and one that does
not, so that a program slower on the windows than on their variants shows as such (estimate.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

VARIANT_NOISE = 0.05  # relative spread of the per-expert scale factor of a variant


@dataclass(frozen=True, eq=False)
class Call:
    weight: np.ndarray  # [L, E], the candidate plans on this
    window: int  # the trace window it is (or varies); its plan is scored on window + 1
    scored: bool  # the trace's own window: counts towards balancedness_score


@dataclass(frozen=True, eq=False)
class Batch:
    calls: tuple[Call, ...]
    window: int  # every call plans on this window or a variant of it
    scored: bool  # one call is the window itself
    first_round: bool  # one of the pairs every window gets, before any batch added for precision


def call_inputs(windows: np.ndarray) -> np.ndarray:
    """The windows as a candidate is given them: token counts stay int64, any other loads become float32."""
    return windows if windows.dtype == np.int64 else windows.astype(np.float32)


class BatchPlan:
    """The batches of one run on `windows`, each of `calls_per_batch` calls, drawn with the secret `rng`.

    `batches()` gives first the first round's `first_round_batches`, shuffled: one batch holding each planned window
    (every window but the last, which is only ever a future) and batches of variants alone, one for each and more on
    a short trace, so that there are at least `min_batches_alone` of them and `min_variants` variants run; then one
    more batch of variants of a random window after another (`another()`), for precision.
    """

    def __init__(self, windows: np.ndarray, calls_per_batch: int, rng: np.random.Generator, min_variants: int,
                 min_batches_alone: int) -> None:
        if calls_per_batch < 1:
            raise ValueError(f"calls_per_batch must be at least 1, got {calls_per_batch}")
        self._windows, self._size, self._rng = windows, calls_per_batch, rng
        planned = len(windows) - 1
        variants_so_far = planned * (calls_per_batch - 1)
        alone = max(planned, min_batches_alone, math.ceil(max(min_variants - variants_so_far, 0) / calls_per_batch))
        order = [(window, True) for window in range(planned)] + [(number % planned, False) for number in range(alone)]
        self._first_round = [order[i] for i in rng.permutation(len(order))]  # (window, scored)
        self._planned = planned

    @property
    def calls_per_batch(self) -> int:
        return self._size

    @property
    def first_round_batches(self) -> int:
        return len(self._first_round)

    def batches(self) -> Iterator[Batch]:
        """The first round's batches in their order, then one more after another, endlessly; each made when it is
        asked for."""
        for window, scored in self._first_round:
            yield self._batch(window, scored, first_round=True)
        while True:
            yield self.another()

    def another(self) -> Batch:
        return self._batch(int(self._rng.integers(self._planned)), scored=False, first_round=False)

    def _batch(self, window: int, scored: bool, first_round: bool) -> Batch:
        calls = [Call(vary(self._windows[window], self._rng), window, scored=False)
                 for _ in range(self._size - scored)]
        if scored:
            calls.insert(int(self._rng.integers(self._size)), Call(self._windows[window], window, scored=True))
        return Batch(tuple(calls), window, scored, first_round)


def warmup_call(windows: np.ndarray, rng: np.random.Generator) -> Call:
    """A variant of a random planned window, to be neither timed nor scored: it absorbs first-call costs
    (allocator, kernel loading, caches) and lets the device's clocks rise."""
    window = int(rng.integers(0, len(windows) - 1))
    return Call(vary(windows[window], rng), window, scored=False)


def vary(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible new input near `weight` ([L, E]): each load scaled by its own factor, then every layer scaled back to
    its own total, exactly. Token counts stay whole numbers: each is rounded down, and the tokens that leaves over go
    one each to the loads with the largest remainders."""
    scaled = weight * rng.lognormal(0.0, VARIANT_NOISE, size=weight.shape)
    totals = weight.sum(axis=-1, keepdims=True, dtype=np.float64)
    scaled_totals = scaled.sum(axis=-1, keepdims=True)
    scaled *= np.divide(totals, scaled_totals, out=np.zeros_like(scaled_totals), where=scaled_totals > 0)
    if not np.issubdtype(weight.dtype, np.integer):
        return scaled.astype(weight.dtype)
    whole = np.floor(scaled)
    left_over = np.rint(totals - whole.sum(axis=-1, keepdims=True))
    largest_remainders_first = np.argsort(whole - scaled, axis=-1)
    extra = np.zeros(weight.shape, dtype=bool)
    np.put_along_axis(extra, largest_remainders_first, np.arange(weight.shape[-1]) < left_over, axis=-1)
    return (whole + extra).astype(weight.dtype)
