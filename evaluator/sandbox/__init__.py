"""Run candidate programs in isolated worker processes: one fresh process per candidate, hard limits,
a private result channel, and nothing left behind.

    with WorkerPool(Limits(timeout_s=10)) as pool:
        with pool.launch("candidate.py") as worker:
            result = worker.call(weight, problem.rebalance_args())

Failures raise `SandboxFailure`, whose `failure.kind` is a `Status` (one of `SANDBOX_FAILURES`).
"""

from __future__ import annotations

from evaluator.sandbox.capture import CapturedOutput
from evaluator.sandbox.failures import Failure, SandboxFailure
from evaluator.sandbox.limits import Limits
from evaluator.sandbox.pool import WorkerPool
from evaluator.sandbox.launch import START_METHODS, WarmUp
from evaluator.sandbox.process import DEFAULT_ENTRY_POINT, Worker
from evaluator.sandbox.results import BatchResult, CallResult, Confinement, Output, Unsupported, WorkerInfo
from evaluator.status import SANDBOX_FAILURES, Status

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "BatchResult",
    "CallResult",
    "CapturedOutput",
    "Confinement",
    "Failure",
    "Limits",
    "Output",
    "SANDBOX_FAILURES",
    "START_METHODS",
    "SandboxFailure",
    "Status",
    "Unsupported",
    "WarmUp",
    "Worker",
    "WorkerInfo",
    "WorkerPool",
]
