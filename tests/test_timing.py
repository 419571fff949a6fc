"""The cross-check of the worker's claimed call times against the evaluator's round trips."""

from __future__ import annotations

import pytest

from evaluator.evaluation.timing import CLOCK_SLACK_MS, measure
from evaluator.sandbox import CallResult

HARNESS_MS = 2.0  # the seed's round trip beyond its calls


def calls(claimed_ms: float, round_trip_ms: float, count: int = 9) -> list[CallResult]:
    return [CallResult(call_index=index, returned_type="tuple", returned_length=3, outputs=(), output_devices=(),
                       worker_ns=round(claimed_ms * 1e6), cuda_event_ns=None,
                       evaluator_wall_ns=round(round_trip_ms * 1e6), input_mutated=False)
            for index in range(1, count + 1)]


def test_the_seed_is_taken_at_its_word():
    timing = measure(calls(500.0, 503.0), None)
    assert (timing.time_ms, timing.overhead_ms, timing.clock_slack_ms, timing.clock_check) == (500.0, 3.0, None,
                                                                                              "agrees")


@pytest.mark.parametrize("claimed_ms", [0.2, 1.0, 15.0, 500.0])
@pytest.mark.parametrize("harness_ms", [HARNESS_MS * 0.5, HARNESS_MS, HARNESS_MS * 1.2])
def test_a_truthful_claim_stands_while_the_harness_keeps_near_the_seeds_pace(claimed_ms, harness_ms):
    timing = measure(calls(claimed_ms, claimed_ms + harness_ms), HARNESS_MS)
    assert timing.time_ms == claimed_ms and timing.clock_check == "agrees"


@pytest.mark.parametrize("true_ms", [5.0, 15.0, 500.0])
def test_a_slow_program_claiming_half_its_time_is_timed_by_its_round_trips(true_ms):
    """The slack grows with the claim only up to the harness's own overhead: claiming half of 15 ms (or of 500)
    gains at most that overhead, where a slack in proportion to the claim would have let it halve its time."""
    timing = measure(calls(true_ms / 2, true_ms + HARNESS_MS), HARNESS_MS)
    assert timing.time_ms == pytest.approx(true_ms - timing.clock_slack_ms)
    assert timing.clock_slack_ms == max(CLOCK_SLACK_MS, min(true_ms / 2, HARNESS_MS))
    assert "that is used" in timing.clock_check


def test_a_claim_of_next_to_nothing_gains_at_most_the_slack():
    timing = measure(calls(0.001, 10.0 + HARNESS_MS), HARNESS_MS)
    assert timing.clock_slack_ms == CLOCK_SLACK_MS
    assert timing.time_ms == pytest.approx(10.0 - CLOCK_SLACK_MS)
