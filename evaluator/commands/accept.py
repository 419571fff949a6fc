"""`accept ID`: make a stored candidate's result on the default trace its regression baseline."""

from __future__ import annotations

import argparse
import json

from evaluator.commands import CommandError, add_store_argument
from evaluator.exitcodes import ExitCode
from evaluator.store import BASELINE_WORKLOAD, DEFAULT_SOURCE, CandidateStore, StoreError

NAME = "accept"
HELP = ("Accept a stored candidate: its latest result on the default trace and problem shape, which must be ok, "
        "becomes its baseline.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the candidate's id, or a unique prefix of at least 4 characters")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    store = CandidateStore(args.store)
    try:
        candidate = store.get(args.id)
        result = candidate.latest_result(BASELINE_WORKLOAD)
        if result is None:
            raise CommandError(
                f"candidate {candidate.id} has no result on the {DEFAULT_SOURCE!r} trace with the default problem "
                "shape to accept; evaluate it there first, e.g. `python -m evaluator apply PATCH` with no workload "
                "or shape option"
            )
        path = store.accept(candidate, result)
    except StoreError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({"status": "accepted", "id": candidate.id, "baseline": result}))
    else:
        print(f"candidate {candidate.id} accepted ({path})")
        print(f"  baseline: combined_score {result['combined_score']:.4f}, balancedness "
              f"{result['balancedness_score']:.4f}, speedup {result['speedup']:.2f}x on {result.get('device')}")
    return ExitCode.OK
