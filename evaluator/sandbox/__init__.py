"""Run candidate programs in isolated worker processes: one fresh process per candidate, hard limits,
a private result channel, and nothing left behind.

    with WorkerPool(Limits(timeout_s=10)) as pool:
        with pool.launch("candidate.py") as worker:
            result = worker.call(weight, problem.rebalance_args())

Failures raise `SandboxFailure`, whose `failure.kind` is a `FailureKind`.
"""

from __future__ import annotations

from evaluator.sandbox.capture import CapturedOutput
from evaluator.sandbox.failures import Failure, FailureKind, SandboxFailure
from evaluator.sandbox.limits import Limits
from evaluator.sandbox.pool import WorkerPool
from evaluator.sandbox.process import DEFAULT_ENTRY_POINT, START_METHODS, WarmUp, Worker
from evaluator.sandbox.results import BatchResult, CallResult, Confinement, Output, Unsupported, WorkerInfo

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "BatchResult",
    "CallResult",
    "CapturedOutput",
    "Confinement",
    "Failure",
    "FailureKind",
    "Limits",
    "Output",
    "START_METHODS",
    "SandboxFailure",
    "Unsupported",
    "WarmUp",
    "Worker",
    "WorkerInfo",
    "WorkerPool",
]
