"""A program's time from the evaluator's round trips, and the cross-check of the worker's claimed call times."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from evaluator.eplb.invariants import check_plan
from evaluator.eplb.problem import Problem
from evaluator.evaluation.timing import harness_overhead_ms, measure
from evaluator.paths import HARNESS_PROGRAM
from evaluator.sandbox import CallResult

HARNESS_MS = 0.4  # the trusted programs' round trip beyond their calls


def calls(claimed_ms: float, round_trip_ms: float, count: int = 9) -> list[CallResult]:
    return [CallResult(call_index=index, returned_type="tuple", returned_length=3, outputs=(), output_devices=(),
                       worker_ns=round(claimed_ms * 1e6), cuda_event_ns=None,
                       evaluator_wall_ns=round(round_trip_ms * 1e6), input_mutated=False)
            for index in range(1, count + 1)]


@pytest.mark.parametrize("problem", [
    Problem(),
    Problem(num_layers=8, num_gpus=144, num_nodes=18),
    Problem(num_layers=2, num_experts=8, num_replicas=8, num_groups=4, num_nodes=2, num_gpus=4),
    Problem(num_layers=3, num_experts=6, num_replicas=18, num_groups=3, num_nodes=2, num_gpus=2),
], ids=["deepseek-v3-prefill", "decode-144-gpus", "no-redundancy", "three-replicas-each"])
def test_the_harness_is_measured_with_the_narrowest_valid_plan(problem):
    """The harness's work grows with the outputs; the program it is measured with returns a valid plan whose log2phy
    is as narrow as R/E allows (some expert holds at least that many slots), so no candidate's outputs are smaller."""
    spec = importlib.util.spec_from_file_location("narrowest_plan", HARNESS_PROGRAM)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    weight = torch.randint(0, 1000, (problem.num_layers, problem.num_experts))
    outputs = program.rebalance_experts(weight, *problem.rebalance_args())
    check = check_plan(outputs, problem)
    assert check.plan is not None, check.violations
    assert outputs[1].shape[-1] == math.ceil(problem.num_replicas / problem.num_experts)


def test_the_harness_time_of_a_trusted_program_is_its_round_trip_beyond_its_calls():
    trusted = calls(500.0, 500.4, count=4) + calls(500.0, 503.0, count=1)  # the median ignores one slow call
    assert harness_overhead_ms(trusted) == pytest.approx(0.4)


@pytest.mark.parametrize("claimed_ms", [0.05, 1.0, 15.0, 500.0])
def test_a_truthful_program_is_timed_at_its_call_while_the_harness_keeps_its_pace(claimed_ms):
    timing = measure(calls(claimed_ms, claimed_ms + HARNESS_MS), HARNESS_MS)
    assert timing.time_ms == pytest.approx(claimed_ms) and timing.clock_check == "agrees"
    assert timing.overhead_ms == pytest.approx(HARNESS_MS) and timing.harness_ms == HARNESS_MS


@pytest.mark.parametrize("pace", [0.5, 1.8])
def test_a_harness_running_at_another_pace_moves_a_truthful_time_by_the_difference_at_most(pace):
    """Faster than when it was measured: the claim, which is then the higher estimate. Slower (the H100 hosts' vCPUs
    switch between paces 1.6 to 1.8 times apart): the round trips, and the claim still agrees."""
    timing = measure(calls(2.0, 2.0 + HARNESS_MS * pace), HARNESS_MS)
    assert timing.time_ms == pytest.approx(2.0 + max(0.0, HARNESS_MS * (pace - 1)))
    assert timing.clock_check == "agrees"


def test_an_honest_program_with_outputs_wider_than_the_narrowest_plans_is_not_named():
    """The harness is measured with the narrowest valid outputs; wider ones cost the worker's copies on top (the seed
    patch's 4.2 MB about as much again as the harness, on an H200 host): timed at its round trips, not named."""
    timing = measure(calls(12.5, 12.5 + HARNESS_MS * 1.9), HARNESS_MS)
    assert timing.time_ms == pytest.approx(12.5 + HARNESS_MS * 0.9)
    assert timing.clock_check == "agrees"


@pytest.mark.parametrize("claimed_ms", [0.000001, 0.001, 7.5])
def test_a_patched_clock_gains_nothing(claimed_ms):
    """A program of 15 ms claiming next to nothing, or half: timed at its round trips less the harness, as if
    it had told the truth."""
    timing = measure(calls(claimed_ms, 15.0 + HARNESS_MS), HARNESS_MS)
    assert timing.time_ms == pytest.approx(15.0)
    assert "the round trips are used" in timing.clock_check
