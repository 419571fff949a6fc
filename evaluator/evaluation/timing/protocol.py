"""The timing protocol's settings and decisions: how many calls a batch holds, when the yardstick is timed, when a run
and the seed's reference have been timed enough, and how long a call may take. Every decision is taken on the
evaluator's own clock, never on a number the candidate's process reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from evaluator.evaluation.timing.estimate import (
    PACE_CHANGE,
    BatchTime,
    HarnessModel,
    Pace,
    relative_precision,
    steady,
)
from evaluator.evaluation.timing.reference import SeedProcess, ratio_spread


@dataclass(frozen=True)
class TimingSettings:
    """How candidates are timed. The defaults are the documented protocol; change them knowingly."""

    # Warm-up lasts at least `warmup_calls` calls (a program's own first-call costs: caches, lazy set-up) and at
    # most `max_warmup_calls`. Where the device idled for `clocks_hold_s` or more before the candidate (no call on
    # it, no spare warming up on it), it lasts `warmup_s` of candidate time too, for the clocks to rise.
    warmup_calls: int = 2
    warmup_s: float = 0.1
    clocks_hold_s: float = 10.0
    max_warmup_calls: int = 100
    # A batch holds enough calls to last `min_batch_ms`, and more if the harness's fixed cost (frames, wake-ups) would
    # be over `harness_share` of it (a lying clock gains about that much, estimate.py); at most `max_batch_calls` (the
    # exchange holds that many calls' inputs and widest outputs). The harness's cost for each call (inputs and outputs
    # copied) is the same however the calls are batched, and is not in a batch's time (estimate.py).
    min_batch_ms: float = 10.0
    harness_share: float = 0.1
    max_batch_calls: int = 16
    # After the first round (a batch holding each window, and batches of variants alone, one for each window and at
    # least `min_batches_alone`: enough for a rank test to tell a program slower on the windows), batches are added
    # until the median's 95% interval is within `precision` of it, or the budget is spent: `budget_s` of the candidate's
    # time in batches and `budget_batches` batches, or (for a program that slow) as long as the seed takes for
    # `budget_batches` calls: a program up to the seed's pace gets as many batches on a noisy host as a fast one.
    precision: float = 0.02
    budget_s: float = 1.0
    budget_batches: int = 60
    min_batches_alone: int = 12
    min_variants: int = 8  # variant calls in the first round, however short the trace
    # The seed's reference: fresh processes, each timing `reference_seed_calls` calls of the seed timed as a candidate
    # is, at least `reference_processes` of them, and more until the seed's ratio to the yardstick is known to within
    # `reference_precision` (its 95% interval) or the reference has taken `reference_budget_s`. Beside a candidate,
    # the yardstick is timed before its first batch, after its last, and between them so that at most about
    # `pace_every_s` of its time lies between two rounds, or `pace_changing_every_s` once the host changed its pace in
    # the run (`yardstick_due`). The yardstick's time is the least of `yardstick_calls` calls each time.
    reference_processes: int = 3
    reference_seed_calls: int = 5
    reference_precision: float = 0.02
    reference_budget_s: float = 10.0
    yardstick_calls: int = 2
    pace_every_s: float = 0.5
    pace_changing_every_s: float = 0.05
    # On a GPU lane a second yardstick, of the candidates' own kind, is timed in each round (reference.py), and each
    # batch is read against the yardstick's pace to the power `pace_weight` times the device's yardstick's to the rest
    # (1.0: the yardstick's alone, and no device yardstick is timed). `device_yardstick_on_cpu` times it on CPU lanes
    # too, where both are CPU work.
    pace_weight: float = 0.5
    device_yardstick_on_cpu: bool = False
    # A candidate's call may take `call_limit_factor` times the seed's time per call on the device, and at least
    # `min_call_limit_s`; its first call, which may compile kernels, `first_call_limit_s`.
    call_limit_factor: float = 10.0
    min_call_limit_s: float = 1.0
    first_call_limit_s: float = 20.0

    def __post_init__(self) -> None:
        counts = ("warmup_calls", "max_warmup_calls", "max_batch_calls", "budget_batches", "min_batches_alone",
                  "reference_processes", "reference_seed_calls", "yardstick_calls")
        problems = [f"{name} must be at least 1, got {getattr(self, name)!r}" for name in counts
                    if not (type(getattr(self, name)) is int and getattr(self, name) >= 1)]
        problems += [f"{name} must be positive and finite, got {getattr(self, name)!r}"
                     for name in ("min_batch_ms", "harness_share", "precision", "budget_s", "reference_precision",
                                  "pace_every_s", "pace_changing_every_s", "call_limit_factor", "min_call_limit_s",
                                  "first_call_limit_s")
                     if not (isinstance(getattr(self, name), (int, float)) and 0 < getattr(self, name) < math.inf)]
        if not (isinstance(self.reference_budget_s, (int, float)) and 0 <= self.reference_budget_s < math.inf):
            problems.append(f"reference_budget_s must be zero or more and finite, got {self.reference_budget_s!r}")
        if not (isinstance(self.pace_weight, (int, float)) and 0 <= self.pace_weight <= 1):
            problems.append(f"pace_weight must be from 0 to 1, got {self.pace_weight!r}")
        if problems:
            raise ValueError("invalid timing settings: " + "; ".join(problems))


def calls_per_batch(call_ms: float, harness: HarnessModel, settings: TimingSettings) -> int:
    """How many calls of a program taking about `call_ms` each (on the evaluator's clock) make a batch that lasts
    `settings.min_batch_ms`, and that the harness's fixed cost is at most `settings.harness_share` of."""
    if call_ms <= 0:
        return settings.max_batch_calls
    wanted = math.ceil(max(settings.min_batch_ms, harness.fixed_ms / settings.harness_share) / call_ms)
    return max(1, min(settings.max_batch_calls, wanted))


def precise_enough(batches: Sequence[BatchTime], paced: int, rounds: Sequence[Pace],
                   settings: TimingSettings) -> bool:
    """Whether `batches` time the program precisely enough: the median's 95% interval within the settings' precision,
    over their round trips per call (the evaluator's clock). Once the host changed its pace in the run (`pace_changed`
    of the yardsticks' rounds so far, `rounds`), each is read against the pace around it at the settings' weight (as
    `estimate` reads them, but for the cap on the device's pace, which needs the seed's reference: this decides only
    when to stop), leaving out those the host changed its pace around; those after the first `paced`, which no round
    follows yet, against the last round's. Against the pace only then: a host that switches between two paces
    spreads the bare round trips over both, which no number of batches narrows, while on a steady host the yardsticks'
    own noise from round to round would only widen the interval."""
    if not pace_changed(rounds):
        values = [batch.round_trip_ms_per_call for batch in batches]
    else:
        weight = settings.pace_weight
        values = [batch.round_trip_ms_per_call / batch.pace_at(weight) for batch in steady(batches[:paced])]
        values += [batch.round_trip_ms_per_call / rounds[-1].at(weight) for batch in batches[paced:]]
    return relative_precision(values) <= settings.precision


def budget_spent(batches: int, spent_s: float, seed_time_ms: float, settings: TimingSettings) -> bool:
    """Whether `batches` batches that took `spent_s` (the evaluator's clock) have spent a program's budget, on a
    device where the seed takes `seed_time_ms` a call."""
    return spent_s >= settings.budget_s and (
        batches >= settings.budget_batches or spent_s * 1e3 >= settings.budget_batches * seed_time_ms)


def reference_timed_enough(processes: Sequence[SeedProcess], spent_s: float, settings: TimingSettings) -> bool:
    """Whether the seed's reference has timed enough fresh processes (`processes`, in `spent_s` on the evaluator's
    clock): the settings' least number, and then its ratio as precise as they ask (`ratio_spread`) or their budget
    spent."""
    return len(processes) >= settings.reference_processes and (
        ratio_spread(processes) <= settings.reference_precision or spent_s >= settings.reference_budget_s)


def call_limit_s(seed_time_ms: float, settings: TimingSettings) -> float:
    """How long one call of a candidate may take on a device where the seed takes `seed_time_ms` per call."""
    return max(settings.min_call_limit_s, settings.call_limit_factor * seed_time_ms / 1e3)


def yardstick_due(candidate_ns: int, rounds: Sequence[Pace], settings: TimingSettings) -> bool:
    """Whether a round of the yardsticks follows the batch just run: when another batch as long would take the
    candidate's time since the last round (`candidate_ns`, that batch counted twice) past `pace_every_s`, or past
    `pace_changing_every_s` once two rounds in a row (`rounds`, the yardsticks' rounds so far) differed by more than
    `PACE_CHANGE`: a host that changed its pace may change it again, and back, between rounds spaced widely."""
    every_s = settings.pace_changing_every_s if pace_changed(rounds) else settings.pace_every_s
    return candidate_ns > every_s * 1e9


def pace_changed(rounds: Sequence[Pace]) -> bool:
    """Whether two of the yardsticks' rounds in a row (`rounds`, in order) differed by more than `PACE_CHANGE`
    (`Pace.change`: either yardstick)."""
    return any(before.change(after) > PACE_CHANGE for before, after in zip(rounds, rounds[1:]))
