"""Exit codes of `python -m evaluator`, one per kind of outcome, so scripts can tell them apart."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REGRESSION = 1  # `check`: an accepted candidate no longer holds
    BAD_INPUT = 2  # wrong argument, unreadable file, malformed trace
    PATCH_ERROR = 3  # the patch could not be applied to its parent
    CANDIDATE_FAILED = 4  # the candidate ran but failed (crash, timeout, invalid output, ...)
    INFRA_ERROR = 5  # the evaluator's own fault, not the candidate's
