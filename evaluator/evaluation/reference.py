"""The seed's own plans on a trace, computed in the evaluator process: the yardsticks a candidate is read against.

The seed is slow by design (Python loops, a round trip through the CPU), so the plans come from the seed
with the seed patch applied, which vectorises it without changing a single output (the tests hold both to
that on random inputs). This is trusted code of the project's own; no candidate code runs here.
"""

from __future__ import annotations

import functools
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluator.eplb.invariants import check_plan
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import Trace
from evaluator.patch import apply_patch
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM
from evaluator.sandbox import WarmUp

SEED_PATCH = PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff"


@dataclass(frozen=True)
class SeedPlans:
    on_window: tuple[Plan, ...]  # [i]: the seed planned on window i, for i in 0..n-1 (all windows)


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
    """The seed's plan on every window of `trace` (cached by its content: the default trace is planned once per
    process). Thread-safe: evaluators in several threads may ask at once."""
    key = (trace.digest, problem)
    with _cache_lock:
        plans = _cache.get(key)
        if plans is None:
            plans = _plan_every_window(trace.windows, problem)
            if len(_cache) >= _CACHED_TRACES:
                _cache.clear()
            _cache[key] = plans
    return plans


def _plan_every_window(windows: np.ndarray, problem: Problem) -> SeedPlans:
    plans = []
    for index, window in enumerate(windows):
        outputs = _seed_module().rebalance_experts(torch.from_numpy(np.array(window)), *problem.rebalance_args())
        check = check_plan(outputs, problem)
        if check.plan is None:
            raise RuntimeError(f"the seed's plan for window {index} is invalid: {check.violations[0].message}")
        plans.append(check.plan)
    return SeedPlans(tuple(plans))
