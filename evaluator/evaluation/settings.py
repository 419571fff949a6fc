"""How candidates are evaluated: the protocol's parameters, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from evaluator.eplb.problem import Problem
from evaluator.evaluation.timing import TimingSettings
from evaluator.sandbox import Limits


@dataclass(frozen=True)
class Settings:
    """How candidates are evaluated. The defaults are the documented protocol; change them knowingly."""

    problem: Problem = field(default_factory=Problem)
    timeout_s: float = 120.0  # one candidate, import and every call included
    timing: TimingSettings = field(default_factory=TimingSettings)
    # Plans made on variants of a window must score (on the next window) within this of the plan made on the
    # window itself, on average over the variants, give or take two standard errors of that average (freshness.py);
    # a candidate whose output does not follow its input (a cached or stale plan, a table looked up from a known
    # trace) falls far below.
    freshness_tolerance: float = 0.03
    rechecks: int = 3  # calls repeated in a fresh process, which must give the same plan: a random few of those run
    # How workers start: "forkserver" (forked from a zygote that imported torch once; 0.8 s on an H100 host) or
    # "spawn" (a new interpreter each, 4.5 s there). Either way each candidate runs in a fresh process.
    start_method: str = "forkserver"
    limits: Limits = field(default_factory=Limits)

    def worker_limits(self) -> Limits:
        """`limits`, with an exchange large enough for a batch of the most calls: each call's input, its widest
        valid plan (log2phy with one column more than there are spare slots) and its input as the call left it, each
        array aligned."""
        problem = self.problem
        layers, experts, slots = problem.num_layers, problem.num_experts, problem.num_replicas
        widest_log2phy = layers * experts * (slots - experts + 1)
        arrays = (layers * experts, layers * slots, layers * experts, widest_log2phy, layers * experts)  # int64 each
        per_call = sum(8 * count + 64 for count in arrays)
        widest = per_call * self.timing.max_batch_calls
        return replace(self.limits, exchange_bytes=max(self.limits.exchange_bytes, widest))
