"""Evaluating a stored candidate, as `apply` and `evaluate ID` do: a result it has, measured the same way, stands
for a new evaluation unless --force; a new result is kept with the candidate."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from evaluator.commands import CommandError
from evaluator.evaluation.result import Result
from evaluator.exitcodes import ExitCode
from evaluator.status import Status
from evaluator.store import StoredCandidate, StoreError

REUSED = "its stored result for this workload, device and software is reused (--force evaluates again)"
# statuses a stored result is not reused with: they depend on the limits it was measured under
_LIMITS_DECIDE = (Status.TIMEOUT.value, Status.MEMORY_LIMIT.value)


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="evaluate again even when a stored candidate has a result measured the same way")


def may_reuse(args: argparse.Namespace) -> bool:
    """Whether the options let a stored result stand for this evaluation: not with --force, nor on a held-out trace,
    which is new each time, nor on a Ray cluster, whose node and card are known only once one takes the candidate."""
    return not (args.force or args.holdout or args.backend == "ray")


def stored_result(stored: StoredCandidate, workload: Mapping[str, Any], here: Mapping[str, Any]) -> Result | None:
    """The stored result this evaluation would repeat, or None: one on `workload`, measured `here` (`measured_here`),
    and not a timeout or a memory limit, which depend on the limits it was given, which a result does not record."""
    try:
        latest = stored.latest_result(workload, here)
    except StoreError as error:
        raise CommandError(f"{error} (--force evaluates again without reading it)", ExitCode.INFRA_ERROR) from None
    return None if latest is None or latest.get("status") in _LIMITS_DECIDE else Result.from_json(latest)
