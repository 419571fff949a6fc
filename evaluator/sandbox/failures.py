"""How a candidate can fail inside the sandbox, as data a loop (or an LLM) can act on."""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluator.sandbox.capture import CapturedOutput
from evaluator.status import SANDBOX_FAILURES, Status


@dataclass(frozen=True)
class Failure:
    """One failed candidate run: `kind` one of `SANDBOX_FAILURES`; `message` says what happened and what to change."""

    kind: Status
    message: str
    stdout: CapturedOutput = field(default_factory=CapturedOutput)
    stderr: CapturedOutput = field(default_factory=CapturedOutput)
    exit_code: int | None = None  # the worker's exit code, when it exited by itself
    signal: str | None = None  # e.g. "SIGSEGV", when a signal ended the worker by itself

    def __post_init__(self) -> None:
        if self.kind not in SANDBOX_FAILURES:
            raise ValueError(f"{self.kind!r} is not a way a worker's run can fail")

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class SandboxFailure(Exception):
    """Raised by `Worker` and `WorkerPool` when a candidate (or the sandbox itself) fails.

    The worker has been killed, with everything it started, by the time this is raised.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure
