"""From a run's timed batches to one time per call, its 95% interval, and the checks on what the worker claimed.

A batch's calls run back to back in the worker, the device synchronised before the first and after the last. Two
clocks time it: the worker's own (its claim: the calls alone), and the evaluator's round trip (the calls and the
harness's work around them: the inputs written and sent to the device, the outputs copied back, two frames). The
claim comes from the candidate's process, so it counts only as far as the round trip bears it out. What the harness
takes is known from trusted batches: its model (fitted with the seed's reference) scaled by the probes, batches of a
trusted program timed in the run's rounds, as many calls as the candidate's and outputs of the seed's shapes
(`harness_scale`). Where the candidate's batches spent beyond their claims more than that, in the median, by more
than the probes differ among themselves (`harness_tolerance`), its claims are doubted as a whole and each batch is
timed at its round trip less the harness's expected time; else each batch is timed at its claim, or at its round trip
less `ALLOWANCE` times the harness's expected time where that is more (a claim that only some batches forge). An
honest program is timed at its claim, exactly what it spent; one whose clock lies gains the probes' error, or,
claiming just under the tolerance, the tolerance's share of the harness's time: a half on a host whose harness keeps
its pace, up to its whole time on one whose harness wanders.

Each batch is read against the host's pace around it (the yardsticks' times, reference.py): its time per call over
the pace is what the median and its interval are taken of, and the time reported is that median at the median pace
of the run. On a GPU lane two yardsticks give the pace, one of each kind of work a program does there (Python loops on
the CPU, and torch's dispatch and kernel launches), mixed as `TimingSettings.pace_weight` says.

The calls on the trace's own windows, whose plans are scored, run in batches like any other; a program slower there
than elsewhere (it recognised them) is timed at its pace there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

ALLOWANCE = 2.0  # how many times its expected time the harness may take in one batch before its claim is doubted
# How far the harness's time in a run's batches (their round trips less their claims), in the median, may exceed its
# expected time before the run's claims are doubted as a whole, at least: more where the probes differ more. On a
# 2-core machine honest programs' batches spent 1.2 to 1.6 times the probes' harness: the evaluator's own threads
# (the next batch made, the replies read) share the cores with them, not with the probes.
HARNESS_TOLERANCE = 0.5
# The scored batches count as slower than the others when a rank test puts them above by this many standard
# deviations (by chance about one run in two hundred) and their excess is more than this share of a call: a smaller
# excess buys a program little, and an honest one is not charged for noise.
SCORED_WORK_Z = 2.5
SCORED_WORK_MARGIN = 0.1
# A batch around which the yardstick's times differ by more than this share ran while the host changed its pace (some
# virtual machines switch between two paces 1.5 times apart every few seconds): no pace is its own, and it is left
# out, as long as most batches are steady.
PACE_CHANGE = 0.1


def pace_change(before_ms: float, after_ms: float) -> float:
    """How far two of the yardstick's times differ, over their mean."""
    return abs(after_ms - before_ms) / ((before_ms + after_ms) / 2)


def mixed_pace(ms: float, device_ms: float | None, weight: float) -> float:
    """The pace a batch is read against: the yardstick's time `ms` to the power `weight` times the device's yardstick's
    to the rest (the yardstick's alone where no device yardstick ran)."""
    return ms if device_ms is None else ms ** weight * device_ms ** (1 - weight)


@dataclass(frozen=True)
class Pace:
    """The yardsticks' times per call at one round, in ms: the device's None where only the yardstick was timed; and
    the harness's probe timed in the round (`harness_scale`), if one was."""

    ms: float
    device_ms: float | None = None
    probe: BatchTime | None = None

    def at(self, weight: float) -> float:
        """This round's pace as batches are read against it (`mixed_pace`)."""
        return mixed_pace(self.ms, self.device_ms, weight)

    def midway(self, after: Pace) -> Pace:
        """The mean of this round's times and the next's (`after`): the pace around the batches between them (the
        device's None unless timed in both)."""
        ms = (self.ms + after.ms) / 2
        if self.device_ms is None or after.device_ms is None:
            return Pace(ms)
        return Pace(ms, (self.device_ms + after.device_ms) / 2)

    def change(self, after: Pace) -> float:
        """How far this round and the next (`after`) differ: the larger change of the two yardsticks (the
        yardstick's alone where the device's was not timed in both)."""
        change = pace_change(self.ms, after.ms)
        if self.device_ms is None or after.device_ms is None:
            return change
        return max(change, pace_change(self.device_ms, after.device_ms))


@dataclass(frozen=True)
class BatchTime:
    """One timed batch as the evaluator saw it."""

    calls: int
    claim_ns: int  # the worker's clock: the calls alone
    round_trip_ns: int  # the evaluator's clock: the calls and the harness's work around them
    output_bytes: int  # of every call's outputs together
    scored: bool  # one of its calls planned on a window of the trace itself
    first_round: bool  # one of the pairs each window gets, which run interleaved (schedule.py)
    pace_ms: float = 1.0  # the yardstick's time around it (reference.py): the mean of the times before and after
    pace_change: float = 0.0  # how far those two differ, over their mean
    device_pace_ms: float | None = None  # the same of the device's yardstick, on a GPU lane

    def pace_at(self, weight: float) -> float:
        """The pace the batch is read against (`mixed_pace`)."""
        return mixed_pace(self.pace_ms, self.device_pace_ms, weight)

    @property
    def steady(self) -> bool:
        """Whether the host kept its pace around the batch, so that the pace it is read against is its own."""
        return self.pace_change <= PACE_CHANGE

    @property
    def round_trip_ms_per_call(self) -> float:
        return self.round_trip_ns / 1e6 / self.calls

    @property
    def beyond_claim_ms(self) -> float:
        """The round trip less the claim: the harness's time, where the claim is true."""
        return (self.round_trip_ns - self.claim_ns) / 1e6


@dataclass(frozen=True)
class HarnessModel:
    """The harness's time in a batch's round trip beyond its calls: fixed, per call and per megabyte of outputs, at
    the host's pace `pace_ms` (the yardstick's time when it was fitted). The harness is the host's CPU work, so on a
    host (or at a moment) the yardstick finds slower, it takes longer in proportion."""

    fixed_ms: float
    per_call_ms: float
    per_mb_ms: float
    pace_ms: float = 1.0

    def ms(self, calls: int, output_bytes: int, pace_ms: float | None = None) -> float:
        """The harness's time in a batch of `calls` with outputs of `output_bytes` in all, at the pace it was fitted
        at or at `pace_ms`."""
        at_fit = self.fixed_ms + self.per_call_ms * calls + self.per_mb_ms * output_bytes / 1e6
        return at_fit if pace_ms is None else at_fit * pace_ms / self.pace_ms

    @classmethod
    def fit(cls, batches: Sequence[BatchTime], pace_ms: float = 1.0) -> HarnessModel:
        """The least-absolute-deviations fit over batches of trusted programs, whose claims are true: round trip less
        claim against one, the calls and the outputs' size. Least absolute deviations, because a batch that waited on
        the evaluator's other threads (spares starting beside it) is an outlier that a least-squares fit follows. The
        coefficients are kept non-negative (a term that fits below zero is dropped and the rest refitted)."""
        if not batches:
            raise ValueError("no trusted batches to fit the harness's model to")
        rows = np.array([[1.0, batch.calls, batch.output_bytes / 1e6] for batch in batches])
        spent = np.array([batch.beyond_claim_ms for batch in batches])
        kept = [0, 1, 2]
        while True:
            solution = _least_absolute_deviations(rows[:, kept], spent)
            if (solution >= 0).all() or len(kept) == 1:
                break
            kept.pop(int(np.argmin(solution)))
        coefficients = dict(zip(kept, np.maximum(solution, 0.0)))
        return cls(*(float(coefficients.get(term, 0.0)) for term in range(3)), pace_ms=pace_ms)


def _least_absolute_deviations(rows: np.ndarray, values: np.ndarray, rounds: int = 50) -> np.ndarray:
    """Coefficients minimising the sum of absolute residuals, by iteratively reweighted least squares (each row
    weighted by one over its last residual, floored so that an exact fit does not divide by zero)."""
    solution, *_ = np.linalg.lstsq(rows, values, rcond=None)
    floor = 1e-6 * max(float(np.abs(values).max()), 1e-9)
    for _ in range(rounds):
        weights = 1.0 / np.sqrt(np.maximum(np.abs(values - rows @ solution), floor))
        solution, *_ = np.linalg.lstsq(rows * weights[:, None], values * weights, rcond=None)
    return solution


@dataclass(frozen=True)
class TimingSummary:
    """Statistics of per-call times in milliseconds (one per batch).

    Percentiles interpolate linearly between samples. `relative_spread` is the interquartile range over the median,
    (p75 - p25) / median: how noisy the median is, untouched by a few outliers.
    """

    count: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    relative_spread: float


@dataclass(frozen=True)
class Timing:
    """How long one program took per call, how precisely that is known, and what the checks found."""

    time_ms: float  # the median over batches of their time per call against the pace, at the run's median pace
    interval_ms: tuple[float, float]  # 95% interval of that median
    precision: float  # half the interval's width over time_ms
    pace_ms: float  # the median pace around the batches (`BatchTime.pace_at`)
    pace_weight: float  # the yardstick's weight in that pace, against the device's yardstick's
    batches: int
    calls: int
    calls_per_batch: int
    summary: TimingSummary  # of the batches' times per call, as measured
    round_trip_ms: float  # median round trip per call, the harness's work included
    harness_ms: float  # the harness's expected time per call, at the median batch
    harness_scale: float  # how many times its model the harness took in the run's probes (`harness_scale`)
    harness_excess: float  # the batches' round trips less their claims over that, in the median (`harness_excess`)
    harness_tolerance: float  # how far over 1 that may be before the run's claims are doubted (`harness_tolerance`)
    claims_doubted: int  # batches timed at their round trip, their claim too far below it
    unsteady_batches: int  # left out: the host changed its pace around them
    scored_work: str  # "agrees", or how much slower the calls on the trace's windows were

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "interval_ms": list(self.interval_ms)}


def device_pace_capped(batches: Sequence[BatchTime], device_over_cpu: float) -> list[BatchTime]:
    """`batches` with the device's yardstick's pace around each at most `device_over_cpu` times the yardstick's (their
    ratio when the seed's reference was measured): its drift held to the yardstick's. On a loaded host the device's
    work slows less than Python loops (benchmarks.md), and kernels a candidate left queued when it was stopped, which
    still run, would slow the device's yardstick and read the candidate as faster. The seed's reference is read with
    the same cap, so that an honest program's noise is trimmed as the seed's was."""
    return [batch if batch.device_pace_ms is None else
            replace(batch, device_pace_ms=min(batch.device_pace_ms, batch.pace_ms * device_over_cpu))
            for batch in batches]


def _model_ms(batch: BatchTime, harness: HarnessModel) -> float:
    """The harness's model for `batch` at the pace around it, at least a microsecond."""
    return max(harness.ms(batch.calls, batch.output_bytes, batch.pace_ms), 1e-3)


def harness_over_model(batch: BatchTime, harness: HarnessModel) -> float:
    """A batch's round trip less its claim over the harness's model at the pace around it."""
    return batch.beyond_claim_ms / _model_ms(batch, harness)


def harness_scale(probes: Sequence[BatchTime], harness: HarnessModel) -> float:
    """How many times its model the harness took in `probes` (trusted batches, whose claims are true: the median of
    `harness_over_model`), at most `ALLOWANCE`; 1 without probes. At most that, because a candidate can slow the
    probes (kernels it left queued on the device when it was stopped still run beside them), and each batch's
    allowance grows with them: so far, it gains no more than the model's allowance alone lets it."""
    if not probes:
        return 1.0
    return min(ALLOWANCE, statistics.median(harness_over_model(probe, harness) for probe in probes))


def harness_tolerance(probes: Sequence[BatchTime], harness: HarnessModel) -> float:
    """How far a run's harness may exceed its expected time, in the median, before the run's claims are doubted as a
    whole: as far as the probes' largest harness exceeds their median (over the model, as `harness_scale` reads
    them), at least `HARNESS_TOLERANCE` and at most `ALLOWANCE` less 1, which it is with fewer than two probes."""
    if len(probes) < 2:
        return ALLOWANCE - 1
    ratios = [harness_over_model(probe, harness) for probe in probes]
    return min(ALLOWANCE - 1, max(HARNESS_TOLERANCE, max(ratios) / max(statistics.median(ratios), 1e-9) - 1))


def harness_ms(batch: BatchTime, harness: HarnessModel, scale: float) -> float:
    """The harness's expected time in `batch`: its model at the pace around the batch, times `scale`
    (`harness_scale`)."""
    return scale * _model_ms(batch, harness)


def harness_excess(batches: Sequence[BatchTime], harness: HarnessModel, scale: float) -> float:
    """The median over `batches` of their round trips less their claims over the harness's expected time: about 1
    where the claims are true."""
    return statistics.median(harness_over_model(batch, harness) for batch in batches) / max(scale, 1e-9)


def batch_ms_per_call(batch: BatchTime, harness_ms: float, allowance: float = ALLOWANCE) -> tuple[float, bool]:
    """A batch's time per call: its claim, or its round trip less `allowance` times the harness's expected time
    (`harness_ms`) if that is more; and whether it was that (the claim doubted)."""
    claim_ms = batch.claim_ns / 1e6
    bound_ms = batch.round_trip_ns / 1e6 - allowance * harness_ms
    return max(claim_ms, bound_ms) / batch.calls, bound_ms > claim_ms


def mostly_steady(batches: Sequence[BatchTime]) -> bool:
    """Whether the host kept its pace around at least half of `batches`."""
    return 2 * sum(batch.steady for batch in batches) >= len(batches)


def steady(batches: Sequence[BatchTime]) -> list[BatchTime]:
    """The batches the host kept its pace around, or all of them if fewer than half are."""
    return [batch for batch in batches if batch.steady] if mostly_steady(batches) else list(batches)


def estimate(batches: Sequence[BatchTime], harness: HarnessModel, weight: float = 1.0,
             probes: Sequence[BatchTime] = ()) -> Timing:
    """The time per call of a program from its timed batches (all with the same number of calls), each timed at its
    claim as far as the harness's time, its model scaled by `probes` (`harness_scale`), bears it out, and read against
    its pace at `weight` (`BatchTime.pace_at`): the median over those the host kept its pace around (`steady`), or the
    scored calls' time where those were clearly slower than the rest of the first round. That check takes every batch
    of the first round: a batch left out of the time is still evidence of where the program spends it."""
    if not batches:
        raise ValueError("no timed batches")
    scale, tolerance = harness_scale(probes, harness), harness_tolerance(probes, harness)
    excess = harness_excess(batches, harness, scale)
    allowance = 1.0 if excess > 1 + tolerance else ALLOWANCE  # the claims doubted as a whole, or batch by batch
    times, doubts = zip(*(batch_ms_per_call(batch, harness_ms(batch, harness, scale), allowance) for batch in batches))
    paces = [batch.pace_at(weight) for batch in batches]
    pace = statistics.median(paces)
    against_pace = [time / batch_pace * pace for time, batch_pace in zip(times, paces)]
    kept = steady(batches)
    every_batch = len(kept) == len(batches)  # too few steady ones to leave any out
    timed = [time for time, batch in zip(against_pace, batches) if every_batch or batch.steady]
    # Scored batches against the batches of variants alone they ran among, not those added after them.
    scored = [time for time, batch in zip(against_pace, batches) if batch.scored]
    others = [time for time, batch in zip(against_pace, batches) if batch.first_round and not batch.scored]
    calls_per_batch = batches[0].calls
    slower = scored_excess_ms(scored, others, calls_per_batch)
    verdict = "agrees"
    time_ms, (low, high) = statistics.median(timed), median_interval(timed)
    if slower > 0:
        # The scored calls' own time: the other calls' pace plus the scored batches' excess, all on the one call.
        time_ms = statistics.median(others) + slower
        low, high = low + slower, high + slower
        verdict = (f"the calls on the trace's own windows took {slower:.3f} ms more than the others ({time_ms:.3f} "
                   f"ms against {statistics.median(others):.3f} ms per call); they set the time")
    middle_batch = sorted(batches, key=lambda batch: batch.round_trip_ns / batch.calls)[len(batches) // 2]
    return Timing(
        time_ms=time_ms, interval_ms=(low, high), precision=(high - low) / 2 / time_ms, pace_ms=pace,
        pace_weight=weight, batches=len(batches),
        calls=sum(batch.calls for batch in batches), calls_per_batch=calls_per_batch, summary=summarise(times),
        round_trip_ms=statistics.median(batch.round_trip_ms_per_call for batch in batches),
        harness_ms=scale * harness.ms(middle_batch.calls, middle_batch.output_bytes,
                                      statistics.median(batch.pace_ms for batch in batches)) / middle_batch.calls,
        harness_scale=scale, harness_excess=excess, harness_tolerance=tolerance, claims_doubted=sum(doubts),
        unsteady_batches=len(batches) - len(kept), scored_work=verdict)


def scored_excess_ms(scored: Sequence[float], others: Sequence[float], calls_per_batch: int) -> float:
    """How much longer one call on a scored window took than the others, when the batches that hold one are clearly
    slower than those that hold none (a rank test, `SCORED_WORK_Z`) by more than `SCORED_WORK_MARGIN` of a call;
    else 0. Each scored batch holds one such call among `calls_per_batch`, so its excess is all that call's."""
    if len(scored) < 2 or len(others) < 2:
        return 0.0
    excess = (statistics.median(scored) - statistics.median(others)) * calls_per_batch
    return excess if clearly_above(scored, others, excess) else 0.0


def clearly_above(higher: Sequence[float], lower: Sequence[float], excess_ms: float) -> bool:
    """Whether times per call `higher` lie above `lower` by a rank test's `SCORED_WORK_Z` standard deviations and by
    an excess (`excess_ms` per call) of more than `SCORED_WORK_MARGIN` of a call: a difference a program could gain by,
    not noise an honest one is charged for."""
    return (len(higher) >= 2 and len(lower) >= 2 and rank_test_z(higher, lower) > SCORED_WORK_Z
            and excess_ms > SCORED_WORK_MARGIN * statistics.median(lower))


def rank_test_z(higher: Sequence[float], lower: Sequence[float]) -> float:
    """How many standard deviations the Mann-Whitney statistic puts `higher` above `lower` (ties count half)."""
    count_high, count_low = len(higher), len(lower)
    wins = sum((a > b) + 0.5 * (a == b) for a in higher for b in lower)
    mean = count_high * count_low / 2
    deviation = math.sqrt(count_high * count_low * (count_high + count_low + 1) / 12)
    return (wins - mean) / deviation


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A 95% interval of the median that assumes no distribution: the order statistics the binomial distribution of
    the count below the median puts the median between. With fewer than six values, the smallest and the largest."""
    ordered = sorted(values)
    count = len(ordered)
    if count < 6:
        return ordered[0], ordered[-1]
    # the largest rank whose chance of having the median below it is at most 2.5%
    below, rank = 0.0, 0
    while below + math.comb(count, rank) / 2 ** count <= (1 - 0.95) / 2:
        below += math.comb(count, rank) / 2 ** count
        rank += 1
    return ordered[max(rank - 1, 0)], ordered[min(count - rank, count - 1)]


def relative_precision(values: Sequence[float]) -> float:
    """Half the width of the median's 95% interval over the median."""
    low, high = median_interval(values)
    return (high - low) / 2 / statistics.median(values)


def summarise(samples_ms: Sequence[float]) -> TimingSummary:
    """Summarise per-call times; raises ValueError on no samples or any sample not a positive finite number."""
    values = np.array([_positive_finite(sample, f"samples_ms[{i}]") for i, sample in enumerate(samples_ms)])
    if values.size == 0:
        raise ValueError("no timing samples: at least one timed call is needed")
    p10, p25, median, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    return TimingSummary(count=int(values.size), median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90),
                         min_ms=float(values.min()), max_ms=float(values.max()),
                         relative_spread=float((p75 - p25) / median))


def _positive_finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} = {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} = {number} is not a positive finite number")
    return number
