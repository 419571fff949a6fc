"""`diff ID [ID2]`: what a stored candidate changed: a unified diff against its parent's program or another's."""

from __future__ import annotations

import argparse
import difflib
import sys

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.stored import ID_HELP, find, parent_label
from evaluator.exitcodes import ExitCode
from evaluator.lineage import LineageError, find_parent_program
from evaluator.store import CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import visible

NAME = "diff"
HELP = ("Print the unified diff of a stored candidate's program against its parent's (the seed, a candidate or a "
        "program file, as it was) or against another candidate's.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", metavar="ID", help=ID_HELP)
    parser.add_argument("other", metavar="ID2", nargs="?", help="the candidate to compare with (default: the parent)")
    add_store_argument(parser)


def run(args: argparse.Namespace) -> int:
    store = CandidateStore(args.store)
    candidate = find(store, args.candidate)
    if args.other is None:
        try:
            before, label = find_parent_program(store, candidate), parent_label(candidate.meta)
        except (LineageError, StoreError) as error:
            raise CommandError(str(error)) from None
    else:
        other = find(store, args.other)
        before, label = _program(other), f"candidate {other.id}"
    diff = unified_diff(before, _program(candidate), label, f"candidate {candidate.id}")
    # a program is the candidate's text: a terminal is shown its control characters as escapes, a pipe gets it exactly
    sys.stdout.write(visible(diff) if sys.stdout.isatty() else diff)
    return ExitCode.OK


def unified_diff(before: str, after: str, before_label: str, after_label: str) -> str:
    """The unified diff that turns `before` into `after`; empty if they are the same."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        before_label, after_label))


def _program(candidate: StoredCandidate) -> str:
    try:
        return candidate.program()
    except StoreError as error:
        raise CommandError(str(error)) from None
