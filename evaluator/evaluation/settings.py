"""How candidates are evaluated: the protocol's parameters, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from evaluator.eplb.problem import Problem
from evaluator.sandbox import Limits


@dataclass(frozen=True)
class Settings:
    """How candidates are evaluated. The defaults are the documented protocol; change them knowingly."""

    problem: Problem = field(default_factory=Problem)
    timeout_s: float = 120.0  # one candidate, import and every call included
    variants_per_window: int = 1  # timed-only calls per planned window
    # Warm-up lasts at least `warmup_calls` calls (a program's own first-call costs: caches, lazy set-up) and at
    # most `max_warmup_calls`. Where the device idled for `clocks_hold_s` or more before the candidate (no call
    # on it, no spare warming up on it), it lasts `warmup_s` of candidate time too, for the clocks to rise. An
    # H100 idle for 20 s kept its clocks (P0, 1980 MHz) and a GPU-bound program its pace from the first call.
    warmup_calls: int = 2
    warmup_s: float = 0.1
    clocks_hold_s: float = 10.0
    max_warmup_calls: int = 100
    # Candidate time after which the remaining variant calls are skipped, once `min_variants` have run: a slow
    # program is not called twice per window, and a program cannot escape the freshness check, nor make it take
    # fewer variants, by spending the budget early.
    timing_budget_s: float = 3.0
    # Plans made on variants of a window must score (on the next window) within this of the plan made on the
    # window itself, on average over the variants, give or take two standard errors of that average (freshness.py);
    # a candidate whose output does not follow its input (a cached or stale plan, a table looked up from a known
    # trace) falls far below.
    freshness_tolerance: float = 0.03
    # Variants in all, however few the trace's windows (more of them per window on a short trace), and the least
    # that run whatever the timing budget, so that their average is known well enough to tell a stale plan from
    # chance.
    min_variants: int = 8
    rechecks: int = 3  # calls repeated in a fresh process, which must give the same plan: a random few of those run
    # Validate each output while the worker computes the next one (less overhead), or between calls (the
    # evaluator's CPU work never overlaps a timed call).
    validate_during_calls: bool = True
    # How workers start: "forkserver" (forked from a zygote that imported torch once; 0.8 s on an H100 host) or
    # "spawn" (a new interpreter each, 4.5 s there). Either way each candidate runs in a fresh process.
    start_method: str = "forkserver"
    limits: Limits = field(default_factory=Limits)

    def worker_limits(self) -> Limits:
        """`limits`, with an exchange large enough for this problem's input and its widest valid plan (log2phy
        with one column more than there are spare slots), each array aligned."""
        problem = self.problem
        layers, experts, slots = problem.num_layers, problem.num_experts, problem.num_replicas
        widest_log2phy = layers * experts * (slots - experts + 1)
        arrays = (layers * experts, layers * slots, layers * experts, widest_log2phy)  # int64 each
        widest = sum(8 * count + 64 for count in arrays)
        return replace(self.limits, exchange_bytes=max(self.limits.exchange_bytes, widest))
