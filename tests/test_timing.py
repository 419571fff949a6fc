"""The timing protocol's parts on their own: the batches' inputs, how many calls a batch holds and when a run is
timed enough, a time per call from batches (claims, round trips, the pace, the scored windows), its interval, the
harness's model and the seed's reference."""

from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from evaluator.eplb.default_trace import default_trace
from evaluator.eplb.invariants import check_plan
from evaluator.eplb.problem import Problem
from evaluator.evaluation.timing import (
    PACE_CHANGE,
    BatchPlan,
    BatchTime,
    HarnessModel,
    Pace,
    SeedReference,
    TimingSettings,
    budget_spent,
    call_inputs,
    call_limit_s,
    calls_per_batch,
    estimate,
    median_interval,
    mostly_steady,
    pace_change,
    precise_enough,
    reference_timed_enough,
    steady,
    summarise,
    vary,
    yardstick_due,
)
from evaluator.evaluation.timing.estimate import ALLOWANCE, HARNESS_TOLERANCE, harness_scale, harness_tolerance
from evaluator.evaluation.timing.reference import ratio_spread
from evaluator.paths import HARNESS_PROGRAM, SEED_PROGRAM

HARNESS = HarnessModel(fixed_ms=0.3, per_call_ms=0.05, per_mb_ms=0.1)


def rounds(*ms: float) -> list[Pace]:
    """Rounds of the yardstick alone (a CPU lane's)."""
    return [Pace(value) for value in ms]
WINDOWS = call_inputs(default_trace().windows)


def batches(times_ms: list[float], calls: int = 1, harness_ms: float = 0.4, scored: list[bool] | None = None,
            paces: list[float] | None = None, claims_ms: list[float] | None = None) -> list[BatchTime]:
    """Batches whose calls took `times_ms` per call (their claims, unless `claims_ms`), each round trip that plus
    `harness_ms`; the scored ones among the first round, every batch at pace 1 unless `paces`."""
    scored = scored or [False] * len(times_ms)
    paces = paces or [1.0] * len(times_ms)
    claims_ms = claims_ms or [time * calls for time in times_ms]
    return [BatchTime(calls, round(claim * 1e6), round((time * calls + harness_ms) * 1e6), 0, hit, True, pace)
            for time, claim, hit, pace in zip(times_ms, claims_ms, scored, paces)]


# --- a time from batches -----------------------------------------------------------------------------------


def probes(harness_ms: float, calls: int = 1, pace: float = 1.0, count: int = 3) -> list[BatchTime]:
    """Trusted batches of `calls` calls timed in a run's rounds at `pace`, whose harness took `harness_ms`."""
    return [BatchTime(calls, 100_000, 100_000 + round(harness_ms * 1e6), 0, False, False, pace)] * count


MODELLED = probes(HARNESS.ms(1, 0))  # probes that found the harness as modelled, each time


@pytest.mark.parametrize("time_ms", [0.05, 1.0, 15.0, 500.0])
def test_a_truthful_program_is_timed_at_its_claim_whatever_the_harness_took_up_to_the_tolerance(time_ms):
    model_ms = HARNESS.ms(1, 0)
    for harness_ms in (0.0, 0.4, (1 + HARNESS_TOLERANCE) * model_ms - 0.01):
        timing = estimate(batches([time_ms] * 9, harness_ms=harness_ms), HARNESS, probes=MODELLED)
        assert timing.time_ms == pytest.approx(time_ms) and timing.claims_doubted == 0


def test_the_probes_scale_the_harness_model_to_what_the_harness_takes_in_the_run():
    assert harness_scale([], HARNESS) == 1.0
    assert harness_scale(probes(2 * HARNESS.ms(4, 0), calls=4), HARNESS) == pytest.approx(2.0)
    # at a pace 2.6 times the model's, the model takes 2.6 times as long: a harness that did too is as modelled
    assert harness_scale(probes(2.6 * HARNESS.ms(1, 0), pace=2.6), HARNESS) == pytest.approx(1.0)
    # a model of no time at all (no trusted batch spent any) counts as a microsecond, and divides nothing by zero
    nothing = HarnessModel(0.0, 0.0, 0.0)
    assert harness_scale(probes(0.5), nothing) == ALLOWANCE
    assert estimate(batches([15.0] * 9, harness_ms=0.0), nothing, probes=probes(0.5)).time_ms == pytest.approx(15.0)


def test_probes_slowed_far_beyond_the_model_raise_a_lying_clocks_allowance_no_further_than_the_model_alone_does():
    """A candidate that leaves work on the device while it is stopped slows the probes beside it tenfold: the
    harness's expected time grows to at most `ALLOWANCE` times its model, and a lying clock gains no more than that
    less the harness's real time."""
    model_ms = HARNESS.ms(1, 0)
    slowed = probes(10 * model_ms)
    assert harness_scale(slowed, HARNESS) == ALLOWANCE
    lying = estimate(batches([15.0] * 9, harness_ms=model_ms, claims_ms=[0.001] * 9), HARNESS, probes=slowed)
    assert 15.0 - lying.time_ms == pytest.approx(ALLOWANCE * model_ms - model_ms)


def test_the_tolerance_is_as_wide_as_the_probes_differ_within_its_bounds():
    model_ms = HARNESS.ms(1, 0)
    assert harness_tolerance(MODELLED, HARNESS) == HARNESS_TOLERANCE
    assert harness_tolerance(probes(model_ms) + probes(1.6 * model_ms, count=2), HARNESS) == pytest.approx(0.6)
    assert harness_tolerance(probes(model_ms) + probes(5 * model_ms, count=2), HARNESS) == ALLOWANCE - 1
    assert harness_tolerance(probes(model_ms, count=1), HARNESS) == ALLOWANCE - 1  # one probe tells no spread
    # a wandering harness leaves a run whose harness took 1.5 times the expected time its claims
    wandering = probes(model_ms) + probes(1.6 * model_ms, count=2)
    timing = estimate(batches([15.0] * 9, harness_ms=1.5 * model_ms), HARNESS, probes=wandering)
    assert timing.claims_doubted == 0 and timing.time_ms == pytest.approx(15.0)


def test_on_a_host_where_the_harness_takes_twice_its_model_the_probes_keep_claims_honest():
    """The harness's model was fitted where the yardstick took 1 ms; here it takes 2.6, and the harness twice its
    model at that pace, as the run's probes show: a truthful program is still timed at its claim, and a lying one
    gains nothing."""
    slow = 2.6
    harness_ms = 2 * HARNESS.ms(1, 0, slow)
    seen = probes(harness_ms, pace=slow)
    truthful = estimate(batches([15.0] * 9, harness_ms=harness_ms, paces=[slow] * 9), HARNESS, probes=seen)
    assert truthful.time_ms == pytest.approx(15.0) and truthful.claims_doubted == 0
    assert truthful.harness_excess == pytest.approx(1.0)
    lying = estimate(batches([15.0] * 9, harness_ms=harness_ms, paces=[slow] * 9, claims_ms=[0.001] * 9), HARNESS,
                     probes=seen)
    assert lying.time_ms == pytest.approx(15.0) and lying.claims_doubted == 9


@pytest.mark.parametrize("claimed_ms", [0.000001, 0.001, 7.5])
def test_a_patched_clock_gains_no_more_than_the_harness_took_beyond_its_expected_time(claimed_ms):
    """A program of 15 ms claiming next to nothing, or half: its claims are doubted as a whole, and each batch timed at
    its round trip less the harness's expected time, off the truth by what the harness took beyond that."""
    timing = estimate(batches([15.0] * 9, claims_ms=[claimed_ms] * 9), HARNESS, probes=MODELLED)
    assert timing.time_ms == pytest.approx(15.0 + 0.4 - HARNESS.ms(1, 0))
    assert timing.claims_doubted == 9 and timing.harness_excess > 1 + HARNESS_TOLERANCE


def test_a_clock_claiming_just_under_the_tolerance_gains_at_most_the_tolerances_share_of_the_harness():
    calls, expected_ms = 16, HARNESS.ms(16, 0)
    just_under = [0.5 * calls - HARNESS_TOLERANCE * expected_ms + 1e-6] * 9
    timing = estimate(batches([0.5] * 9, calls=calls, harness_ms=expected_ms, claims_ms=just_under), HARNESS,
                      probes=probes(expected_ms, calls=calls))
    assert timing.claims_doubted == 0  # neither the run's harness nor any batch's was beyond what is allowed
    assert 0.5 - timing.time_ms == pytest.approx(HARNESS_TOLERANCE * expected_ms / calls, rel=1e-3)


def test_a_clock_lying_in_a_third_of_the_batches_moves_the_median_only_within_the_honest_batches_spread():
    times = [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57, 0.58]
    claims = [time if index % 3 else 0.001 for index, time in enumerate(times)]
    honest = estimate(batches(times), HARNESS, probes=MODELLED)
    lying = estimate(batches(times, claims_ms=claims), HARNESS, probes=MODELLED)
    assert lying.claims_doubted == 3 and lying.harness_excess < 1 + HARNESS_TOLERANCE
    assert min(times) <= lying.time_ms <= honest.time_ms


def test_a_program_whose_harness_takes_far_more_than_the_probes_is_charged_the_excess():
    """Its claims are true, but its batches spent beyond them far more than the trusted probes did: no claim in the run
    is taken beyond what the round trips bear out, and each batch is timed at its round trip less the harness's
    expected time."""
    expected_ms = HARNESS.ms(1, 0)
    timing = estimate(batches([15.0] * 9, harness_ms=2 * expected_ms), HARNESS, probes=probes(expected_ms))
    assert timing.time_ms == pytest.approx(15.0 + expected_ms) and timing.claims_doubted == 9


def test_batches_run_while_the_host_changed_its_pace_are_left_out_as_long_as_most_are_steady():
    """Three batches ran across a switch of the host's pace (their yardstick rounds differ by 30%): their pace is not
    their own, so they count for nothing; if most batches were like that, all would count."""
    built = batches([10.0] * 8 + [14.0] * 3)
    marked = [replace(batch, pace_change=0.3) if index >= 8 else batch for index, batch in enumerate(built)]
    timing = estimate(marked, HARNESS)
    assert timing.time_ms == pytest.approx(10.0) and (timing.batches, timing.unsteady_batches) == (11, 3)
    everywhere = estimate([replace(batch, pace_change=0.3) for batch in built], HARNESS)
    assert (everywhere.batches, everywhere.unsteady_batches) == (11, 0)


def test_a_program_timed_while_the_host_slows_down_is_read_against_the_pace_around_each_batch():
    """Half its batches at the host's usual pace, half at 1.6 times slower, its time slowed alike: the same time as
    at a steady pace, and no spread from it."""
    steady = estimate(batches([10.0] * 12), HARNESS)
    paces = [1.0] * 6 + [1.6] * 6
    shifting = estimate(batches([10.0 * pace for pace in paces], paces=paces), HARNESS)
    assert shifting.time_ms / shifting.pace_ms == pytest.approx(steady.time_ms / steady.pace_ms)
    assert shifting.precision == pytest.approx(0.0)


def two_paced(times: np.ndarray, cpu: np.ndarray, device: np.ndarray) -> list[BatchTime]:
    """Batches taking `times` per call, the yardstick's pace around them `cpu` and the device's yardstick's `device`."""
    return [replace(batch, device_pace_ms=pace)
            for batch, pace in zip(batches(list(times), paces=list(cpu)), device)]


def test_a_program_read_against_the_mix_its_time_follows_holds_still_and_against_another_spreads():
    """The host's two kinds of work slow apart: a program whose time follows an even mix of the two yardsticks is read
    against that mix with no spread; against either yardstick alone its time spreads."""
    rng = np.random.default_rng(0)
    cpu = 2.0 * rng.uniform(1.0, 2.0, 40)
    device = 3.0 * rng.uniform(1.0, 1.5, 40)
    measured = two_paced(10.0 * np.sqrt(cpu / 2.0 * device / 3.0), cpu, device)
    assert estimate(measured, HARNESS, 0.5).precision == pytest.approx(0.0, abs=1e-6)
    assert estimate(measured, HARNESS, 0.5).pace_weight == 0.5
    assert min(estimate(measured, HARNESS, weight).precision for weight in (0.0, 1.0)) > 0.01
    assert measured[0].pace_at(0.5) == pytest.approx(np.sqrt(cpu[0] * device[0]))


def test_without_the_devices_yardstick_a_program_is_read_against_the_yardstick_alone():
    measured = batches([10.0, 12.0, 11.0], paces=[2.0, 2.4, 2.2])
    assert [batch.pace_at(0.0) for batch in measured] == [2.0, 2.4, 2.2]
    assert estimate(measured, HARNESS, 0.0).time_ms == estimate(measured, HARNESS).time_ms


def test_a_program_slower_on_the_scored_windows_is_timed_there():
    """Fast on variants, three times slower on the windows it recognised: its time is the windows' time."""
    scored = [True, False] * 11
    timing = estimate(batches([3.0 if hit else 1.0 for hit in scored], scored=scored), HARNESS)
    assert timing.time_ms == pytest.approx(3.0)
    assert "took 2.000 ms more" in timing.scored_work


def test_in_a_batch_of_several_calls_the_scored_batches_excess_is_all_the_scored_calls():
    calls, scored = 8, [True, False] * 11
    per_call = [(5.0 + (calls - 1) * 1.0) / calls if hit else 1.0 for hit in scored]  # one call of 5 ms among 1 ms ones
    timing = estimate(batches(per_call, calls=calls, scored=scored), HARNESS)
    assert timing.time_ms == pytest.approx(5.0)


def test_an_honest_program_with_noise_is_not_taken_for_one_slower_on_the_scored_windows():
    rng = np.random.default_rng(7)
    for _ in range(50):
        scored = [True, False] * 11
        times = list(rng.lognormal(np.log(13.0), 0.05, size=len(scored)))
        timing = estimate(batches(times, scored=scored), HARNESS)
        assert timing.scored_work == "agrees"
        assert timing.time_ms == pytest.approx(statistics.median(times))


def test_the_interval_of_the_median_takes_the_order_statistics_the_binomial_puts_it_between():
    values = list(range(1, 23))  # 22 values: ranks 6 and 17
    assert median_interval(values) == (6, 17)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95%: the whole range


def test_the_interval_holds_the_true_median_about_95_times_in_100():
    rng = np.random.default_rng(3)
    trials = 2000
    held = sum(low <= 0.0 <= high for low, high in (median_interval(list(rng.standard_normal(30)))
                                                     for _ in range(trials)))
    assert 0.94 <= held / trials <= 0.99


def test_the_harness_model_is_fitted_to_trusted_batches_unmoved_by_a_few_delayed_ones_and_never_negative():
    truth = HarnessModel(0.25, 0.04, 0.12)
    trusted = [BatchTime(calls, 1_000_000, 1_000_000 + round(truth.ms(calls, size) * 1e6), size, False, False)
               for calls in (1, 8) for size in (200_000, 4_000_000)]
    fitted = HarnessModel.fit(trusted)
    assert (fitted.fixed_ms, fitted.per_call_ms, fitted.per_mb_ms) == pytest.approx((0.25, 0.04, 0.12), abs=1e-6)
    # a few batches that waited on something else (spares starting beside them) do not move it
    delayed = [replace(batch, round_trip_ns=batch.round_trip_ns + 2_000_000) if index % 5 == 0 else batch
               for index, batch in enumerate(trusted * 4)]
    assert vars(HarnessModel.fit(delayed)) == pytest.approx(vars(truth), abs=1e-3)
    shrinking = [BatchTime(calls, 1_000_000, 1_000_000 + round((1.0 - 0.1 * calls) * 1e6), 0, False, False)
                 for calls in (1, 2, 4)]
    assert all(term >= 0 for term in vars(HarnessModel.fit(shrinking)).values())


def test_a_summary_of_per_call_times():
    samples = [5.0, 1.0, 9.0, 3.0, 7.0, 11.0, 2.0, 10.0, 4.0, 8.0, 6.0]  # 1..11 shuffled
    summary = summarise(samples)
    assert (summary.count, summary.median_ms, summary.min_ms, summary.max_ms) == (11, 6.0, 1.0, 11.0)
    assert summary.p10_ms == pytest.approx(2.0) and summary.p90_ms == pytest.approx(10.0)
    assert summary.relative_spread == pytest.approx((8.5 - 3.5) / 6.0)


@pytest.mark.parametrize("samples, message", [
    ([], "no timing samples"),
    ([1.0, float("nan")], r"samples_ms\[1\] = nan is not a positive finite number"),
    ([-3.0], r"samples_ms\[0\] = -3.0"),
    (["3"], r"samples_ms\[0\] = '3' is not a number"),
    ([True], r"samples_ms\[0\] = True is not a number"),
])
def test_a_summary_refuses_nonsense(samples, message):
    with pytest.raises(ValueError, match=message):
        summarise(samples)


# --- decisions -----------------------------------------------------------------------------------------------


def test_a_batch_lasts_long_enough_to_keep_the_harness_a_few_percent_of_it():
    settings = TimingSettings(min_batch_ms=10.0, harness_share=0.03)
    assert calls_per_batch(13.0, HARNESS, settings) == 1
    assert calls_per_batch(4.0, HARNESS, settings) == 3
    assert calls_per_batch(0.5, HARNESS, settings) == settings.max_batch_calls  # 20 wanted, capped
    assert calls_per_batch(0.0, HARNESS, settings) == settings.max_batch_calls
    slow_harness = HarnessModel(fixed_ms=0.6, per_call_ms=0.0, per_mb_ms=0.0)  # 20 ms for 3%
    assert calls_per_batch(4.0, slow_harness, settings) == 5


def test_a_run_is_precise_enough_when_the_medians_interval_is_within_the_precision():
    settings = TimingSettings(precision=0.02)
    batch = BatchTime(1, 9_000_000, 10_000_000, 0, False, False, pace_ms=2.0)
    assert precise_enough([batch] * 22, 22, rounds(2.0, 2.0), settings)
    assert not precise_enough([batch, replace(batch, round_trip_ns=14_000_000)] * 11, 22, rounds(2.0, 2.0), settings)


def test_once_the_host_changed_its_pace_precision_is_read_against_the_pace_around_each_batch():
    settings = TimingSettings(precision=0.02)
    fast = BatchTime(1, 9_000_000, 10_000_000, 0, False, False, pace_ms=2.0)
    slow = replace(fast, claim_ns=18_000_000, round_trip_ns=20_000_000, pace_ms=4.0)  # the host at half its pace
    assert precise_enough([fast, slow] * 11, 22, rounds(2.0, 4.0, 2.0), settings)
    # the batches no round follows yet are read at the last round's pace: here the slow one's
    assert precise_enough([fast, slow] * 6 + [slow] * 10, 12, rounds(2.0, 4.0), settings)
    assert not precise_enough([fast, slow] * 6 + [slow] * 10, 12, rounds(4.0, 2.0), settings)
    # a batch the host changed its pace around has no pace of its own and is left out, as the estimate leaves it out
    changed = replace(fast, round_trip_ns=15_000_000, pace_change=0.5)
    changing = rounds(2.0, 3.0, 2.0)
    assert precise_enough([fast] * 16 + [changed] * 6, 22, changing, settings)
    assert not precise_enough([fast] * 16 + [replace(changed, pace_change=0.0)] * 6, 22, changing, settings)


def test_on_a_gpu_lane_precision_is_read_against_the_mix_of_the_two_yardsticks():
    """The device's yardstick alone changed (twofold): batches are read against the even mix, as `estimate` reads
    them, where the yardstick's pace alone would leave them spread."""
    mix = TimingSettings(precision=0.02, pace_weight=0.5)
    fast = BatchTime(1, 9_000_000, 10_000_000, 0, False, False, pace_ms=2.0, device_pace_ms=3.0)
    slow = replace(fast, round_trip_ns=round(10_000_000 * np.sqrt(2)), device_pace_ms=6.0)
    changing = [Pace(2.0, 3.0), Pace(2.0, 6.0), Pace(2.0, 3.0)]
    assert precise_enough([fast, slow] * 11, 22, changing, mix)
    assert not precise_enough([fast, slow] * 11, 22, changing, replace(mix, pace_weight=1.0))


def test_while_the_host_keeps_its_pace_precision_is_read_on_the_bare_round_trips():
    """The yardstick's own noise from round to round (here 6%, under `PACE_CHANGE`) would widen the interval."""
    settings = TimingSettings(precision=0.02)
    first = [BatchTime(1, 9_000_000, 10_000_000, 0, False, False, pace_ms=2.0)] * 11
    second = [replace(batch, pace_ms=2.12) for batch in first]
    assert pace_change(2.0, 2.12) < PACE_CHANGE
    assert precise_enough(first + second, 22, rounds(1.94, 2.06, 2.18), settings)
    assert not precise_enough(first + second, 22, rounds(1.94, 2.06, 2.18, 2.5), settings)


def test_the_budget_is_a_second_and_sixty_batches_or_the_seeds_time_for_sixty_calls():
    settings = TimingSettings(budget_s=1.0, budget_batches=30)
    assert not budget_spent(100, 0.5, 400.0, settings)  # fast batches: the time's budget is not spent
    assert not budget_spent(22, 1.0, 400.0, settings)  # the time's budget spent, not the batches'
    assert budget_spent(30, 1.0, 400.0, settings)
    # a program as slow as the seed: 22 batches of 400 ms are not the budget yet; 30 are
    assert not budget_spent(22, 22 * 0.4, 400.0, settings)
    assert budget_spent(30, 30 * 0.4, 400.0, settings)
    # slower than the seed: no more batches than the seed's time for the budget's
    assert budget_spent(22, 12.0, 400.0, settings)
    assert not budget_spent(22, 11.9, 400.0, settings)


def _seed_process(*claims_ms: float, pace_ms: float = 2.0, device_pace_ms: float | None = None):
    """A fresh process of the seed as the reference takes it: one-call batches of these claims at a steady pace."""
    batches = [BatchTime(1, round(ms * 1e6), round(ms * 1e6) + 500_000, 0, False, True, pace_ms=pace_ms,
                         device_pace_ms=device_pace_ms) for ms in claims_ms]
    return batches, [pace_ms] * (len(claims_ms) + 1), [] if device_pace_ms is None else [device_pace_ms] * 3


def test_the_seeds_reference_takes_processes_until_its_ratio_is_precise_or_its_budget_is_spent():
    settings = TimingSettings(reference_processes=3, reference_precision=0.02, reference_budget_s=30.0)
    still = _seed_process(300.0, 300.0, 301.0, 300.0, 299.0)
    noisy = _seed_process(240.0, 300.0, 360.0, 270.0, 330.0)
    assert ratio_spread([still] * 3) <= 0.02 < ratio_spread([noisy] * 3)
    assert not reference_timed_enough([still] * 2, 1.0, settings)  # precise already, but fewer than the least
    assert reference_timed_enough([still] * 3, 1.0, settings)
    assert not reference_timed_enough([noisy] * 3, 29.0, settings)  # not precise yet, and the budget is not spent
    assert reference_timed_enough([noisy] * 3, 30.0, settings)
    # more of the same noise narrows the median's interval: enough processes are precise without the budget
    many = next(count for count in itertools.count(3) if reference_timed_enough([noisy] * count, 1.0, settings))
    assert 3 < many and ratio_spread([noisy] * many) <= 0.02


def test_on_a_gpu_the_seeds_reference_is_as_precise_as_the_wider_of_its_two_ratios():
    """A yardstick that followed every call of the seed gives a ratio known exactly; the device's, which kept one pace,
    a ratio as noisy as the calls: the reference is only as precise as that one."""
    claims = (240.0, 300.0, 360.0, 270.0, 330.0)
    batches, _, _ = _seed_process(*claims, device_pace_ms=3.0)
    followed = [replace(batch, pace_ms=batch.claim_ns / 1e6 / 150) for batch in batches]
    spread = ratio_spread([(followed, [1.0] * 6, [3.0] * 3)] * 3)
    assert spread == pytest.approx(ratio_spread([_seed_process(*claims)] * 3)) and spread > 0.02
    assert ratio_spread([(followed, [1.0] * 6, [])] * 3) == pytest.approx(0.0)  # off a GPU, the exact one alone


def test_a_run_is_mostly_steady_when_the_host_kept_its_pace_around_half_its_batches_or_more():
    steady_batch = BatchTime(1, 10, 11, 0, False, False, pace_ms=2.0, pace_change=0.05)
    changed = replace(steady_batch, pace_change=0.4)
    assert mostly_steady([steady_batch, changed])
    assert not mostly_steady([steady_batch, changed, changed])
    assert steady([steady_batch, changed, steady_batch]) == [steady_batch, steady_batch]
    assert steady([steady_batch, changed, changed]) == [steady_batch, changed, changed]


def test_the_yardstick_follows_time_and_more_often_once_the_pace_changed():
    settings = TimingSettings(pace_every_s=0.5, pace_changing_every_s=0.05)
    assert not yardstick_due(400_000_000, rounds(2.5), settings)
    assert yardstick_due(600_000_000, rounds(2.5), settings)
    assert not yardstick_due(60_000_000, rounds(2.5, 2.6, 2.55), settings)  # within PACE_CHANGE
    assert yardstick_due(60_000_000, rounds(2.5, 4.2), settings)
    assert not yardstick_due(40_000_000, rounds(2.5, 4.2), settings)
    assert yardstick_due(60_000_000, rounds(2.5, 4.2, 4.2, 4.2), settings)  # the host changed once in this run
    # on a GPU lane, a change of the device's yardstick alone is a change of the host's pace too
    assert yardstick_due(60_000_000, [Pace(2.5, 3.0), Pace(2.55, 4.5)], settings)
    assert not yardstick_due(60_000_000, [Pace(2.5, 3.0), Pace(2.55, 3.1)], settings)


def test_a_call_may_take_ten_times_the_seeds_time_and_at_least_a_second():
    settings = TimingSettings()
    assert call_limit_s(500.0, settings) == pytest.approx(5.0)
    assert call_limit_s(20.0, settings) == settings.min_call_limit_s


@pytest.mark.parametrize("field, value", [("max_batch_calls", 0), ("precision", 0.0), ("budget_s", math.inf),
                                          ("warmup_calls", 1.5), ("pace_every_s", -1.0),
                                          ("pace_weight", 1.5), ("pace_weight", "half"),
                                          ("reference_precision", 0.0), ("reference_budget_s", -1.0),
                                          ("reference_budget_s", math.inf)])
def test_timing_settings_refuse_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        TimingSettings(**{field: value})


def first_round(plan: BatchPlan) -> list:
    return list(itertools.islice(plan.batches(), plan.first_round_batches))


# --- the batches' inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("calls", [1, 5])
def test_each_batch_holds_one_window_its_window_at_most_once_and_every_planned_window_once(calls):
    plan = BatchPlan(WINDOWS, calls, np.random.default_rng(1), min_variants=8, min_batches_alone=12)
    first = first_round(plan)
    planned = len(WINDOWS) - 1
    assert all(len(batch.calls) == calls for batch in first)
    assert all({call.window for call in batch.calls} == {batch.window} for batch in first)
    assert all(batch.window < planned for batch in first)  # the last window is only ever a future
    scored = [call for batch in first for call in batch.calls if call.scored]
    assert sorted(call.window for call in scored) == list(range(planned))
    assert all(sum(call.scored for call in batch.calls) == batch.scored for batch in first)
    assert all(np.array_equal(call.weight, WINDOWS[call.window]) for call in scored)
    assert sum(not batch.scored for batch in first) == 12  # a batch of variants alone for each window, and one more
    extra = plan.another()
    assert not extra.scored and not extra.first_round and {call.window for call in extra.calls} == {extra.window}


def test_a_short_trace_still_gets_the_least_number_of_variants_and_of_batches_of_variants_alone():
    plan = BatchPlan(WINDOWS[:2], 1, np.random.default_rng(1), min_variants=8, min_batches_alone=6)
    variants = [call for batch in first_round(plan) for call in batch.calls if not call.scored]
    assert len(variants) == 8
    plan = BatchPlan(WINDOWS[:2], 1, np.random.default_rng(1), min_variants=2, min_batches_alone=6)
    assert sum(not batch.scored for batch in first_round(plan)) == 6


def test_no_input_is_given_twice():
    plan = BatchPlan(WINDOWS, 4, np.random.default_rng(2), min_variants=8, min_batches_alone=12)
    inputs = [call.weight.tobytes() for batch in [*first_round(plan), plan.another()] for call in batch.calls]
    assert len(set(inputs)) == len(inputs)


def test_a_variant_carries_as_many_tokens_in_each_layer_as_its_window_so_no_sum_tells_them_apart():
    rng = np.random.default_rng(5)
    window = WINDOWS[3]
    variant = vary(window, rng)
    assert variant.dtype == window.dtype and variant.min() >= 0
    np.testing.assert_array_equal(variant.sum(axis=-1), window.sum(axis=-1))
    assert 0.02 < np.abs(variant - window).mean() / window.mean() < 0.06
    silent = window.copy()
    silent[0] = 0
    assert vary(silent, rng)[0].sum() == 0
    loads = window.astype(np.float32)
    np.testing.assert_allclose(vary(loads, rng).sum(axis=-1), loads.sum(axis=-1), rtol=1e-5)


# --- the seed's reference -----------------------------------------------------------------------------------


def imported(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("problem", [
    Problem(),
    Problem(num_layers=8, num_gpus=144, num_nodes=18),
    Problem(num_layers=2, num_experts=8, num_replicas=8, num_groups=4, num_nodes=2, num_gpus=4),
    Problem(num_layers=3, num_experts=6, num_replicas=18, num_groups=3, num_nodes=2, num_gpus=2),
], ids=["deepseek-v3-prefill", "decode-144-gpus", "no-redundancy", "three-replicas-each"])
def test_the_harness_is_modelled_with_the_narrowest_valid_plan_and_probed_with_it_in_the_seeds_shapes(problem):
    """The harness's work grows with the outputs; the program it is measured with returns a valid plan whose log2phy
    is as narrow as R/E allows (some expert holds at least that many slots), so no candidate's outputs are smaller."""
    program, seed = (imported(path) for path in (HARNESS_PROGRAM, SEED_PROGRAM))
    weight = torch.randint(0, 1000, (problem.num_layers, problem.num_experts))
    outputs = program.rebalance_experts(weight, *problem.rebalance_args())
    check = check_plan(outputs, problem)
    assert check.plan is not None, check.violations
    assert outputs[1].shape[-1] == math.ceil(problem.num_replicas / problem.num_experts)
    # the harness's probe: the same plan, with outputs as large as the seed's
    probe = program.in_the_seeds_shapes(weight, *problem.rebalance_args())
    assert check_plan(probe, problem).plan is not None
    seeds = seed.rebalance_experts(weight, *problem.rebalance_args())
    assert [output.shape for output in probe] == [output.shape for output in seeds]
    assert torch.equal(probe[1][..., :outputs[1].shape[-1]], outputs[1])


def test_the_seeds_reference_caps_the_devices_pace_as_a_candidates_is_so_the_seed_reads_as_itself():
    """The device's yardstick's noise above the CPU yardstick's drift is trimmed from a candidate's batches; trimmed
    from the seed's too, the seed's own batches read as a candidate's give a speedup of 1 (untrimmed there, 0.91)."""
    seed = [BatchTime(1, 10_000_000, 10_500_000, 0, False, True, pace_ms=2.0, device_pace_ms=ms)
            for ms in (3.0, 3.6, 3.6, 3.0, 3.6)]
    rounds = [2.0] * 6, [3.0] * 6  # the yardsticks' rounds: the device's 3.0 ms at their median
    trusted = [BatchTime(calls, calls * 1_000_000, calls * 1_000_000 + 400_000 + calls * 50_000, 0, False, False)
               for calls in (1, 1, 8, 8)]
    reference = SeedReference.measured([(seed, *rounds)] * 3, trusted)
    assert reference.device_ratio == pytest.approx(10.0 / 3.0)  # against 3.0 ms, the capped pace of every batch
    for weight in (0.5, 1.0, 0.0):  # the even mix, the yardstick alone (a CPU lane's reading), the device's alone
        timing = estimate(reference.capped(seed), reference.harness, weight)
        assert reference.ratio_at(weight) * timing.pace_ms / timing.time_ms == pytest.approx(1.0)
