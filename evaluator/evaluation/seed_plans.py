"""The seed's own plans on a trace, computed in the evaluator process: the yardsticks a candidate is read against.

The seed is slow by design (Python loops, a round trip through the CPU), so the plans come from the seed
with the seed patch applied, which vectorises it without changing a single output (the tests hold both to
that on random inputs). This is trusted code of the project's own; no candidate code runs here.
"""

from __future__ import annotations

import functools
import statistics
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluator.eplb.invariants import check_plan
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.scoring import balancedness_scores, next_window_report, window_loads
from evaluator.eplb.trace import Trace
from evaluator.evaluation.timing import call_inputs, vary
from evaluator.patch import apply_patch
from evaluator.paths import SEED_PATCH, SEED_PROGRAM
from evaluator.sandbox import WarmUp

REFERENCE_VARIANTS = 16  # the seed's own variants, which tell how far an honest program's gaps spread
_REFERENCE_VARIANT_SEED = 0  # a fixed generator: these variants are never given to a candidate


@dataclass(frozen=True, eq=False)
class SeedPlans:
    """The seed's plans on a trace's windows, and (when first asked for) how far its gaps spread on variants."""

    windows: np.ndarray  # [W, L, E]
    problem: Problem
    on_window: tuple[Plan, ...]  # [i]: the seed planned on window i, for i in 0..n-1 (all windows)

    @functools.cached_property
    def gap_spread(self) -> float:
        """The standard deviation of the seed's gaps over `REFERENCE_VARIANTS` variants: per variant, its window's
        plan's balancedness on the next window less the variant's plan's (as the input-dependence check takes
        them). Sixteen more plans of the seed (0.4 s of CPU on the default trace): computed only for a candidate
        whose gaps average over the tolerance, which an honest one's do not."""
        loads = window_loads(self.windows)
        on_window_scores = balancedness_scores(list(self.on_window[:-1]), loads, self.problem).per_window
        inputs = call_inputs(self.windows)
        rng = np.random.default_rng(_REFERENCE_VARIANT_SEED)
        gaps = []
        for number in range(REFERENCE_VARIANTS):
            window = number % (len(self.windows) - 1)
            variant = _seed_plan(vary(inputs[window], rng), self.problem, f"a variant of window {window}")
            gaps.append(on_window_scores[window]
                        - next_window_report(variant, loads, window, self.problem).balancedness_score)
        return statistics.stdev(gaps)


def seed_patch_program() -> str:
    """The seed with the seed patch applied: the seed's plans, fast."""
    return apply_patch(SEED_PROGRAM.read_text(encoding="utf-8"), SEED_PATCH.read_text(encoding="utf-8"))


def seed_patch_warm_up(folder: Path, problem: Problem, weight_dtype: str) -> WarmUp:
    """The warm-up every fresh worker runs: the seed patch's program (our own code, written into `folder`) on
    loads of the candidates' shape and dtype."""
    program = folder / "warm_up.py"
    program.write_text(seed_patch_program(), encoding="utf-8")
    return WarmUp(program, (problem.num_layers, problem.num_experts), problem.rebalance_args(),
                  weight_dtype=weight_dtype)


@functools.lru_cache(maxsize=1)
def _seed_module() -> types.ModuleType:
    source = seed_patch_program()
    module = types.ModuleType("eplb_seed_reference")
    exec(compile(source, str(SEED_PROGRAM), "exec"), module.__dict__)
    return module


_CACHED_TRACES = 4
_cache: dict[tuple[str, Problem], SeedPlans] = {}
_cache_lock = threading.Lock()


def seed_plans(trace: Trace, problem: Problem) -> SeedPlans:
    """The seed's plan on every window of `trace` (cached by the trace's content: the default trace is planned once
    per process). Thread-safe: evaluators in several threads may ask at once."""
    key = (trace.digest, problem)
    with _cache_lock:
        plans = _cache.get(key)
        if plans is None:
            plans = _seed_plans(trace.windows, problem)
            if len(_cache) >= _CACHED_TRACES:
                _cache.clear()
            _cache[key] = plans
    return plans


def _seed_plans(windows: np.ndarray, problem: Problem) -> SeedPlans:
    on_window = tuple(_seed_plan(window, problem, f"window {index}") for index, window in enumerate(windows))
    return SeedPlans(windows, problem, on_window)


def _seed_plan(load: np.ndarray, problem: Problem, what: str) -> Plan:
    outputs = _seed_module().rebalance_experts(torch.from_numpy(np.array(load)), *problem.rebalance_args())
    check = check_plan(outputs, problem)
    if check.plan is None:
        raise RuntimeError(f"the seed's plan for {what} is invalid: {check.violations[0].message}")
    return check.plan
