"""Scores of valid plans: balancedness on the next load window, and speed against the seed.

Balancedness of one plan on one window is a ratio of sums over layers:
(sum_l mean_u load[l, u]) / (sum_l max_u load[l, u]), with u a GPU (the score)
or a slot (reported beside it). A layer whose window carries no load adds 0 to
both sums, so it is skipped; a window with no load at all scores 1.0, since
every GPU is equally idle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Real

import numpy as np
import torch

from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem

# Each tenfold speedup over the seed adds this much; 10,000x (about the physical floor) scores 1.
SPEED_SCORE_PER_DECADE = 0.25


@dataclass(frozen=True)
class GpuLoads:
    """How one plan loads the GPUs on one window: per GPU summed over layers; per layer the busiest GPU's load and
    the mean GPU load, whose sums' ratio is the plan's balancedness there."""

    per_gpu: tuple[float, ...]
    layer_max: tuple[float, ...]
    layer_mean: tuple[float, ...]


@dataclass(frozen=True)
class BalancednessReport:
    """Balancedness of plans[i] (made on window i) on window i+1, averaged over i.

    `reference_*` is the seed planned on window i+1 itself and scored there: what
    perfect foresight with the seed's algorithm reaches (None if not asked for).
    """

    balancedness_score: float
    slot_balancedness_score: float
    per_window: tuple[float, ...]
    slot_per_window: tuple[float, ...]
    reference_score: float | None = None
    reference_per_window: tuple[float, ...] | None = None
    gpu_loads: GpuLoads | None = None  # how the plan loads each GPU on the next window, where asked for


def gpu_balancedness(
    phy2log: torch.Tensor, logcnt: torch.Tensor, loads: torch.Tensor, problem: Problem
) -> torch.Tensor:
    """Per-GPU balancedness of N (plan, window) pairs: phy2log [N, L, R], logcnt and loads [N, L, E] -> [N].

    Slot p carries loads[l, phy2log[l, p]] / logcnt[l, phy2log[l, p]]; GPU g sums
    slots g*S .. (g+1)*S-1. Computed on phy2log's device in float64.
    """
    return _gpu_ratio(_slot_loads(phy2log, logcnt, loads, problem), problem)


def slot_balancedness(
    phy2log: torch.Tensor, logcnt: torch.Tensor, loads: torch.Tensor, problem: Problem
) -> torch.Tensor:
    """The same ratio per slot instead of per GPU: blind to how slots are packed onto GPUs."""
    return _mean_over_max(_slot_loads(phy2log, logcnt, loads, problem))


def balancedness_scores(
    plans: Sequence[Plan],
    windows: torch.Tensor | Sequence[torch.Tensor],
    problem: Problem,
    reference_plans: Sequence[Plan] | None = None,
    device: torch.device | str | None = None,
) -> BalancednessReport:
    """Score plans[i], made on windows[i], on windows[i+1]; reference_plans[i] was made on windows[i+1].

    `windows` is [W, L, E] (or W tensors [L, E]) with W = len(plans) + 1. Work
    runs on `device`, by default the windows' device.
    """
    stacked = torch.stack(tuple(windows)) if not isinstance(windows, torch.Tensor) else windows
    if len(plans) == 0 or stacked.shape[0] != len(plans) + 1:
        raise ValueError(
            f"need one window more than plans (plans[i] is scored on windows[i+1]), "
            f"got {len(plans)} plans and {stacked.shape[0]} windows"
        )
    target = torch.device(device) if device is not None else stacked.device
    future = stacked[1:].to(target)
    gpu, slot = _score_plans(plans, future, problem, target)
    reference = None
    if reference_plans is not None:
        if len(reference_plans) != len(plans):
            raise ValueError(f"got {len(reference_plans)} reference plans for {len(plans)} plans")
        reference, _ = _score_plans(reference_plans, future, problem, target)
    return BalancednessReport(
        balancedness_score=_mean(gpu),
        slot_balancedness_score=_mean(slot),
        per_window=gpu,
        slot_per_window=slot,
        reference_score=None if reference is None else _mean(reference),
        reference_per_window=reference,
    )


def window_loads(windows: np.ndarray) -> torch.Tensor:
    """A trace's windows ([W, L, E]) as the loads plans are scored on: float64, exact for every load a trace holds."""
    return torch.from_numpy(np.array(windows, dtype=np.float64))


def next_window_report(plan: Plan, loads: torch.Tensor, window: int, problem: Problem,
                       with_gpu_loads: bool = False) -> BalancednessReport:
    """How `plan`, made on window `window` of `loads` ([W, L, E]) or on an input near it, balances the window after;
    `with_gpu_loads`, with the load it puts on each GPU there."""
    report = balancedness_scores([plan], loads[window:window + 2], problem)
    return replace(report, gpu_loads=gpu_loads(plan, loads[window + 1], problem)) if with_gpu_loads else report


def gpu_loads(plan: Plan, loads: torch.Tensor, problem: Problem) -> GpuLoads:
    """The load `plan` puts on each GPU of each layer under one window's `loads` ([L, E]), summed up as `GpuLoads`."""
    slots = _slot_loads(plan.phy2log[None], plan.logcnt[None], loads.to(plan.phy2log.device)[None], problem)[0]
    per_layer = slots.view(problem.num_layers, problem.num_gpus, problem.slots_per_gpu).sum(-1).cpu()
    return GpuLoads(tuple(per_layer.sum(0).tolist()), tuple(per_layer.amax(-1).tolist()),
                    tuple(per_layer.mean(-1).tolist()))


def combined_reports(reports: Sequence[BalancednessReport]) -> BalancednessReport:
    """One report from reports on consecutive stretches of the trace (plans scored as they arrive, one window
    each): the same numbers `balancedness_scores` gives for all the plans at once. References are dropped."""
    if not reports:
        raise ValueError("no reports to combine")
    gpu = tuple(score for report in reports for score in report.per_window)
    slot = tuple(score for report in reports for score in report.slot_per_window)
    return BalancednessReport(_mean(gpu), _mean(slot), gpu, slot)


def speedup(seed_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is than the seed, from two per-call times."""
    return _positive_finite(seed_ms, "seed_ms") / _positive_finite(candidate_ms, "candidate_ms")


def speed_score(speedup: float) -> float:
    """clip(log10(speedup) / 4, 0, 1): 1x (or slower) scores 0, each tenfold speedup adds 0.25."""
    value = _positive_finite(speedup, "speedup")
    return min(1.0, max(0.0, math.log10(value) * SPEED_SCORE_PER_DECADE))


def combined_score(balancedness: float, speed_score: float) -> float:
    """The mean of the balancedness score and the speed score, each in [0, 1]."""
    return (_unit_interval(balancedness, "balancedness") + _unit_interval(speed_score, "speed_score")) / 2


def _score_plans(
    plans: Sequence[Plan], future: torch.Tensor, problem: Problem, device: torch.device
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    phy2log = torch.stack([plan.phy2log.to(device) for plan in plans])
    logcnt = torch.stack([plan.logcnt.to(device) for plan in plans])
    slot_loads = _slot_loads(phy2log, logcnt, future, problem)  # once for both ratios
    gpu = _gpu_ratio(slot_loads, problem)
    slot = _mean_over_max(slot_loads)
    return tuple(gpu.tolist()), tuple(slot.tolist())


def _slot_loads(phy2log: torch.Tensor, logcnt: torch.Tensor, loads: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Load of every slot, [N, L, R] float64 on phy2log's device."""
    layers, experts, replicas = problem.num_layers, problem.num_experts, problem.num_replicas
    if phy2log.dim() != 3 or tuple(phy2log.shape[1:]) != (layers, replicas):
        raise ValueError(f"phy2log has shape {list(phy2log.shape)}, expected [N, {layers}, {replicas}]")
    pairs = phy2log.shape[0]
    for name, tensor in (("logcnt", logcnt), ("loads", loads)):
        if tuple(tensor.shape) != (pairs, layers, experts):
            raise ValueError(f"{name} has shape {list(tensor.shape)}, expected [{pairs}, {layers}, {experts}]")
    loads = loads.to(device=phy2log.device, dtype=torch.float64)
    if not _finite_and_non_negative(loads):
        raise ValueError("loads must be finite and non-negative")
    replicas_of_slot = logcnt.to(phy2log.device).gather(-1, phy2log).to(torch.float64)
    return loads.gather(-1, phy2log) / replicas_of_slot


def _finite_and_non_negative(values: torch.Tensor) -> bool:
    """In one pass (aminmax) rather than four, each of which costs more than the work on a plan's loads: NaN, which
    aminmax propagates, fails both comparisons."""
    if values.numel() == 0:  # no pairs to score; aminmax refuses an empty tensor
        return True
    low, high = torch.aminmax(values)
    return float(low) >= 0 and math.isfinite(float(high))


def _gpu_ratio(slot_loads: torch.Tensor, problem: Problem) -> torch.Tensor:
    """`gpu_balancedness` from the slots' loads, [N, L, R] -> [N]."""
    pairs, layers, _ = slot_loads.shape
    return _mean_over_max(slot_loads.view(pairs, layers, problem.num_gpus, problem.slots_per_gpu).sum(-1))


def _mean_over_max(unit_loads: torch.Tensor) -> torch.Tensor:
    """(sum over layers of the mean over units) / (sum over layers of the max), [N, L, U] -> [N]."""
    mean = unit_loads.mean(-1).sum(-1)
    peak = unit_loads.amax(-1).sum(-1)
    loaded = peak > 0
    return torch.where(loaded, mean / torch.where(loaded, peak, 1.0), 1.0)


def _mean(values: tuple[float, ...]) -> float:
    return math.fsum(values) / len(values)


def _positive_finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} = {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} = {number} is not a positive finite number")
    return number


def _unit_interval(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} = {value!r} is not a number")
    number = float(value)
    if not 0.0 <= number <= 1.0:  # false for NaN too
        raise ValueError(f"{name} = {number} is not in [0, 1]")
    return number
