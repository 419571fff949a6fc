"""How an evaluation ends: one status, the same in a result, its JSON, the sandbox's failures and exit codes."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Every way an evaluation can end. The values are the `status` strings of results; a `Status` equals its value.
    Any status but `OK` scores 0; each but `OK` and `INFRA_ERROR` is the candidate's doing."""

    OK = "ok"
    APPLY_ERROR = "apply_error"  # the patch did not apply: no program to run
    IMPORT_ERROR = "import_error"  # the program raised (or exited) while being imported
    MISSING_FUNCTION = "missing_function"  # no callable entry point
    EXCEPTION = "exception"  # the entry point raised
    TIMEOUT = "timeout"  # the import or a call ran past its wall-clock limit
    CRASH = "crash"  # the worker died (signal, exit code) or broke its channel or process limit
    MEMORY_LIMIT = "memory_limit"  # the process tree used more host memory than allowed
    INVALID_OUTPUT = "invalid_output"  # a plan broke an invariant, or the program broke the calling contract
    INFRA_ERROR = "infra_error"  # the evaluator's own fault: no candidate code was involved

    def __str__(self) -> str:
        return self.value

    @property
    def candidate_failed(self) -> bool:
        """Whether the candidate is responsible for this end, and it is a failure."""
        return self not in (Status.OK, Status.INFRA_ERROR)


# The ends a worker's run can come to in the sandbox, which knows nothing of patches and plans.
SANDBOX_FAILURES = frozenset({Status.IMPORT_ERROR, Status.MISSING_FUNCTION, Status.EXCEPTION, Status.TIMEOUT,
                              Status.CRASH, Status.MEMORY_LIMIT, Status.INFRA_ERROR})
