"""Scores: balancedness per GPU and per slot, the window each plan is scored on, speed."""

from __future__ import annotations

import math

import pytest
import torch
from eplb_plans import load_seed, lognormal_weight, plan_outputs, random_phy2log
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluator.eplb.invariants import check_plan
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.scoring import (
    balancedness_scores,
    combined_reports,
    combined_score,
    gpu_balancedness,
    next_window_report,
    slot_balancedness,
    speed_score,
    speedup,
)

# One layer, 3 experts, 4 slots on 2 GPUs (2 slots each).
TWO_GPUS = Problem(num_layers=1, num_experts=3, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
RANDOM = Problem(num_layers=5, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2, num_gpus=4)


def make_plan(rows: list[list[int]], problem: Problem) -> Plan:
    check = check_plan(plan_outputs(torch.tensor(rows), problem.num_experts, problem.max_replicas_per_expert), problem)
    assert check.valid, check.violations
    return check.plan


def score(plans: list[Plan], loads: list[list[list[float]]], problem: Problem) -> tuple[list[float], list[float]]:
    """(per-GPU, per-slot) balancedness of plans[n] on loads[n]."""
    phy2log = torch.stack([plan.phy2log for plan in plans])
    logcnt = torch.stack([plan.logcnt for plan in plans])
    window = torch.tensor(loads, dtype=torch.float64)
    return (
        gpu_balancedness(phy2log, logcnt, window, problem).tolist(),
        slot_balancedness(phy2log, logcnt, window, problem).tolist(),
    )


def loop_balancedness(plan: Plan, loads: torch.Tensor, problem: Problem, per_gpu: bool) -> float:
    """The formula written out slot by slot, as a reference for the vectorised code."""
    phy2log, logcnt, loads = plan.phy2log.tolist(), plan.logcnt.tolist(), loads.tolist()
    mean_sum = max_sum = 0.0
    for layer in range(problem.num_layers):
        units = [0.0] * (problem.num_gpus if per_gpu else problem.num_replicas)
        for slot, expert in enumerate(phy2log[layer]):
            unit = slot // problem.slots_per_gpu if per_gpu else slot
            units[unit] += loads[layer][expert] / logcnt[layer][expert]
        mean_sum += sum(units) / len(units)
        max_sum += max(units)
    return mean_sum / max_sum if max_sum > 0 else 1.0


# --- hand-computed examples --------------------------------------------------------------------------------

# Loads 6, 2, 4 with expert 0 split over two slots: slot loads 3, 3, 2, 4 in some order.
PACKED_WELL = [[0, 0, 1, 2]]  # GPU 0 = 3 + 3 = 6, GPU 1 = 2 + 4 = 6
PACKED_BADLY = [[0, 1, 0, 2]]  # GPU 0 = 3 + 2 = 5, GPU 1 = 3 + 4 = 7


def test_hand_computed_two_gpus() -> None:
    gpu, slot = score([make_plan(PACKED_BADLY, TWO_GPUS)], [[[6, 2, 4]]], TWO_GPUS)
    gpu_loads = [6 / 2 + 2, 6 / 2 + 4]
    slot_loads = [6 / 2, 2, 6 / 2, 4]
    assert gpu == [pytest.approx((sum(gpu_loads) / 2) / max(gpu_loads), rel=1e-15)]
    assert gpu[0] == pytest.approx(6 / 7, rel=1e-15)
    assert slot == [pytest.approx((sum(slot_loads) / 4) / max(slot_loads), rel=1e-15)]
    assert slot[0] == pytest.approx(0.75, rel=1e-15)


def test_perfect_plan_scores_one() -> None:
    gpu, _ = score([make_plan(PACKED_WELL, TWO_GPUS)], [[[6, 2, 4]]], TWO_GPUS)
    assert gpu == [1.0]
    even = Problem(num_layers=2, num_experts=4, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
    gpu, slot = score([make_plan([[0, 1, 2, 3], [3, 2, 1, 0]], even)], [[[5, 5, 5, 5], [1, 1, 1, 1]]], even)
    assert gpu == [1.0] and slot == [1.0]


def test_per_slot_is_blind_to_gpu_packing() -> None:
    plans = [make_plan(PACKED_WELL, TWO_GPUS), make_plan(PACKED_BADLY, TWO_GPUS)]
    gpu, slot = score(plans, [[[6, 2, 4]], [[6, 2, 4]]], TWO_GPUS)
    assert slot[0] == slot[1] == pytest.approx(0.75)
    assert gpu[0] == 1.0
    assert gpu[1] == pytest.approx(6 / 7)


def test_layers_combine_as_a_ratio_of_sums() -> None:
    problem = Problem(num_layers=2, num_experts=3, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
    plan = make_plan(PACKED_BADLY * 2, problem)
    # Layer 0 (loads 6, 2, 4): GPUs 5 and 7. Layer 1 (loads 1, 1, 2): slots 0.5, 1, 0.5, 2, GPUs 1.5 and 2.5.
    gpu, _ = score([plan], [[[6, 2, 4], [1, 1, 2]]], problem)
    ratio_of_sums = (6 + 2) / (7 + 2.5)
    mean_of_ratios = (6 / 7 + 2 / 2.5) / 2
    assert gpu[0] == pytest.approx(ratio_of_sums, rel=1e-15)
    assert gpu[0] != pytest.approx(mean_of_ratios, rel=1e-6)


def test_idle_layers_are_skipped_and_an_idle_window_scores_one() -> None:
    problem = Problem(num_layers=2, num_experts=3, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
    plan = make_plan(PACKED_BADLY * 2, problem)
    gpu, slot = score([plan, plan], [[[6, 2, 4], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]], problem)
    assert gpu == [pytest.approx(6 / 7), 1.0]
    assert slot == [pytest.approx(0.75), 1.0]


def test_plan_is_scored_on_the_window_after_the_one_it_was_made_on() -> None:
    problem = Problem(num_layers=1, num_experts=2, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
    # Made for loads (3, 1): expert 0 in three slots, GPU loads 1 + 1 and 1 + 1: perfect on window 0.
    plan = make_plan([[0, 1, 0, 0]], problem)
    windows = torch.tensor([[[3.0, 1.0]], [[1.0, 3.0]]])
    assert score([plan], [windows[0].tolist()], problem)[0] == [1.0]
    report = balancedness_scores([plan], windows, problem)
    # On window 1 (loads 1, 3): GPU 0 = 1/3 + 3, GPU 1 = 1/3 + 1/3; mean 2.
    assert report.per_window == (pytest.approx(2 / (1 / 3 + 3)),)
    assert report.balancedness_score == pytest.approx(0.6)
    assert report.reference_score is None and report.reference_per_window is None


def test_the_load_a_plan_puts_on_each_gpu_is_reported_on_the_next_window_where_asked_for() -> None:
    problem = Problem(num_layers=2, num_experts=3, num_replicas=4, num_groups=1, num_nodes=1, num_gpus=2)
    plan = make_plan(PACKED_BADLY * 2, problem)
    windows = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[6.0, 2.0, 4.0], [1.0, 1.0, 2.0]]],
                           dtype=torch.float64)
    assert next_window_report(plan, windows, 0, problem).gpu_loads is None
    report = next_window_report(plan, windows, 0, problem, with_gpu_loads=True)
    # As in test_layers_combine_as_a_ratio_of_sums: GPUs 5 and 7, then 1.5 and 2.5.
    loads = report.gpu_loads
    assert loads.per_gpu == (5 + 1.5, 7 + 2.5)
    assert loads.layer_max == (7, 2.5) and loads.layer_mean == (6, 2)
    assert sum(loads.layer_mean) / sum(loads.layer_max) == pytest.approx(report.balancedness_score, rel=1e-15)


# --- vectorised against the loop, the seed as reference ----------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_vectorised_matches_a_loop_on_random_plans(seed: int) -> None:
    plans = [
        make_plan(random_phy2log(RANDOM, seed + n).tolist(), RANDOM) for n in range(3)
    ]
    windows = torch.stack([lognormal_weight(RANDOM, seed + 10 + n) for n in range(3)])
    windows[1, 2] = 0  # an idle layer
    phy2log = torch.stack([plan.phy2log for plan in plans])
    logcnt = torch.stack([plan.logcnt for plan in plans])
    gpu = gpu_balancedness(phy2log, logcnt, windows, RANDOM).tolist()
    slot = slot_balancedness(phy2log, logcnt, windows, RANDOM).tolist()
    for n, plan in enumerate(plans):
        assert gpu[n] == pytest.approx(loop_balancedness(plan, windows[n], RANDOM, per_gpu=True), rel=1e-12)
        assert slot[n] == pytest.approx(loop_balancedness(plan, windows[n], RANDOM, per_gpu=False), rel=1e-12)
        assert 0 < slot[n] <= gpu[n] <= 1  # a GPU's max is at most S times its slots' max


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), plans=st.integers(1, 6))
def test_plans_scored_one_window_at_a_time_combine_to_the_same_numbers(seed: int, plans: int) -> None:
    made = [make_plan(random_phy2log(RANDOM, seed + n).tolist(), RANDOM) for n in range(plans)]
    windows = torch.stack([lognormal_weight(RANDOM, seed + 10 + n) for n in range(plans + 1)])
    whole = balancedness_scores(made, windows, RANDOM)
    one_by_one = combined_reports([balancedness_scores([plan], windows[n:n + 2], RANDOM)
                                   for n, plan in enumerate(made)])
    assert one_by_one == whole  # bit for bit: a candidate's score does not depend on how it was computed


def test_combining_no_reports_is_refused() -> None:
    with pytest.raises(ValueError, match="no reports"):
        combined_reports([])


def test_seed_plans_and_reference() -> None:
    seed_program = load_seed()
    problem = Problem(num_layers=6)
    windows = [lognormal_weight(problem, seed=100 + i) for i in range(4)]

    def seed_plan(window: torch.Tensor) -> Plan:
        check = check_plan(seed_program.run_eplb(window, *problem.rebalance_args()), problem)
        assert check.valid
        return check.plan

    plans = [seed_plan(window) for window in windows[:-1]]
    references = [seed_plan(window) for window in windows[1:]]
    report = balancedness_scores(plans, windows, problem, reference_plans=references)
    expected = [loop_balancedness(plans[i], windows[i + 1], problem, per_gpu=True) for i in range(3)]
    expected_slot = [loop_balancedness(plans[i], windows[i + 1], problem, per_gpu=False) for i in range(3)]
    expected_reference = [loop_balancedness(references[i], windows[i + 1], problem, per_gpu=True) for i in range(3)]
    assert report.per_window == pytest.approx(expected, rel=1e-12)
    assert report.slot_per_window == pytest.approx(expected_slot, rel=1e-12)
    assert report.reference_per_window == pytest.approx(expected_reference, rel=1e-12)
    assert report.balancedness_score == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert report.slot_balancedness_score == pytest.approx(sum(expected_slot) / 3, rel=1e-12)
    assert report.reference_score == pytest.approx(sum(expected_reference) / 3, rel=1e-12)
    # Planning on the very window scored beats planning on an unrelated one.
    assert report.reference_score > report.balancedness_score
    assert balancedness_scores(plans, torch.stack(windows), problem) == balancedness_scores(plans, windows, problem)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    plans = [make_plan(random_phy2log(RANDOM, n).tolist(), RANDOM) for n in range(3)]
    windows = torch.stack([lognormal_weight(RANDOM, n) for n in range(4)])
    on_cpu = balancedness_scores(plans, windows, RANDOM, reference_plans=plans)
    on_gpu = balancedness_scores(plans, windows, RANDOM, reference_plans=plans, device="cuda")
    assert on_gpu.per_window == pytest.approx(on_cpu.per_window, rel=1e-12)
    assert on_gpu.reference_per_window == pytest.approx(on_cpu.reference_per_window, rel=1e-12)


# --- bad scoring input -------------------------------------------------------------------------------------


def test_window_count_must_be_one_more_than_plans() -> None:
    plan = make_plan(PACKED_WELL, TWO_GPUS)
    windows = torch.ones(2, 1, 3)
    with pytest.raises(ValueError, match="got 2 plans and 2 windows"):
        balancedness_scores([plan, plan], windows, TWO_GPUS)
    with pytest.raises(ValueError, match="got 0 plans and 1 windows"):
        balancedness_scores([], windows[:1], TWO_GPUS)
    with pytest.raises(ValueError, match="got 2 reference plans for 1 plans"):
        balancedness_scores([plan], windows, TWO_GPUS, reference_plans=[plan, plan])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_loads_must_be_finite_and_non_negative(bad: float) -> None:
    plan = make_plan(PACKED_WELL, TWO_GPUS)
    with pytest.raises(ValueError, match="finite and non-negative"):
        score([plan], [[[6, bad, 4]]], TWO_GPUS)


def test_shapes_must_match_the_problem() -> None:
    plan = make_plan(PACKED_WELL, TWO_GPUS)
    with pytest.raises(ValueError, match=r"phy2log has shape \[1, 4\], expected \[N, 1, 4\]"):
        gpu_balancedness(plan.phy2log, plan.logcnt[None], torch.ones(1, 1, 3), TWO_GPUS)
    with pytest.raises(ValueError, match=r"loads has shape \[1, 1, 2\], expected \[1, 1, 3\]"):
        gpu_balancedness(plan.phy2log[None], plan.logcnt[None], torch.ones(1, 1, 2), TWO_GPUS)


# --- speed --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio, expected",
    [(1.0, 0.0), (10.0, 0.25), (100.0, 0.5), (10_000.0, 1.0), (1e6, 1.0), (1e300, 1.0), (0.5, 0.0), (1e-9, 0.0)],
)
def test_speed_score_endpoints(ratio: float, expected: float) -> None:
    assert speed_score(ratio) == pytest.approx(expected, abs=1e-15)


def test_speed_score_is_log_linear_in_between() -> None:
    assert speed_score(476 / 13.6) == pytest.approx(math.log10(476 / 13.6) / 4)


@pytest.mark.parametrize("ratio", [0.0, -2.0, float("nan"), float("inf"), "10"])
def test_speed_score_refuses_nonsense(ratio: object) -> None:
    with pytest.raises(ValueError, match="speedup"):
        speed_score(ratio)


def test_speedup_is_seed_time_over_candidate_time() -> None:
    assert speedup(476.0, 4.76) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="candidate_ms = 0.0"):
        speedup(476.0, 0.0)
    with pytest.raises(ValueError, match="seed_ms = nan"):
        speedup(float("nan"), 1.0)


def test_combined_score_is_the_mean() -> None:
    assert combined_score(0.8, 0.25) == pytest.approx(0.525)
    assert combined_score(1.0, 1.0) == 1.0 and combined_score(0.0, 0.0) == 0.0


@pytest.mark.parametrize("balancedness, speed", [(1.5, 0.5), (0.5, -0.1), (float("nan"), 0.5), (0.5, None)])
def test_combined_score_refuses_nonsense(balancedness: object, speed: object) -> None:
    with pytest.raises(ValueError, match="not"):
        combined_score(balancedness, speed)
