"""How a candidate can fail inside the sandbox, as data a loop (or an LLM) can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from evaluator.sandbox.capture import CapturedOutput


class FailureKind(str, Enum):
    """Failure kinds the sandbox reports; the values are the `status` strings of an evaluation."""

    IMPORT_ERROR = "import_error"  # the program raised (or exited) while being imported
    MISSING_FUNCTION = "missing_function"  # no callable entry point
    EXCEPTION = "exception"  # the entry point raised
    TIMEOUT = "timeout"  # the import or a call ran past its wall-clock limit
    CRASH = "crash"  # the worker died (signal, exit code) or broke its channel or process limit
    MEMORY_LIMIT = "memory_limit"  # the process tree used more host memory than allowed
    INFRA_ERROR = "infra_error"  # the evaluator's own fault: no candidate code was involved

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Failure:
    """One failed candidate run. `message` says what happened and what to change."""

    kind: FailureKind
    message: str
    stdout: CapturedOutput = field(default_factory=CapturedOutput)
    stderr: CapturedOutput = field(default_factory=CapturedOutput)
    exit_code: int | None = None  # the worker's exit code, when it exited by itself
    signal: str | None = None  # e.g. "SIGSEGV", when a signal ended the worker by itself

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


class SandboxFailure(Exception):
    """Raised by `Worker` and `WorkerPool` when a candidate (or the sandbox itself) fails.

    The worker has been killed, with everything it started, by the time this is raised.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure
