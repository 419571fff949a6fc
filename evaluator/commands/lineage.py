"""`lineage ID`: print how a candidate descends from the seed, one step per line, root first."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import git

from evaluator.commands import CommandError, add_store_argument
from evaluator.exitcodes import ExitCode
from evaluator.lineage import LineageError, NotRecorded, path_from_seed, record_stored
from evaluator.untrusted import NAME_CHARS, one_line

NAME = "lineage"
HELP = "Print the path from the seed to a candidate: each step's id, name and git commit in <store>/.lineage."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", metavar="ID", help="a candidate id (or a unique prefix of at least 4 characters)")
    add_store_argument(parser)
    parser.add_argument(
        "--record",
        action="store_true",
        help="first record the candidate and any unrecorded ancestors from the store (e.g. in a fresh clone)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    try:
        if args.record:
            record_stored(args.store, args.candidate)
        steps = path_from_seed(args.store, args.candidate)
    except NotRecorded as error:
        raise CommandError(f"{error} (--record adds it from the store)") from None
    except LineageError as error:
        raise CommandError(str(error)) from None
    except (git.GitError, OSError) as error:
        raise CommandError(f"cannot use the lineage under {args.store}: {error}", ExitCode.INFRA_ERROR) from None
    if args.json:
        print(json.dumps({"lineage": [asdict(step) for step in steps]}))
        return ExitCode.OK
    for step in steps:
        print(f"{step.candidate_id or 'root':<12}  {step.commit[:12]}  {one_line(step.name, NAME_CHARS)}")
    return ExitCode.OK
