"""`lineage ID`: print how a candidate descends from the seed, one step per line, root first."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import git

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.stored import ID_HELP, SCORE_COLUMNS, SCORE_HEADERS, Scores, find, scores_of
from evaluator.commands.terminal import show, table
from evaluator.commands.traces import OnTrace, add_trace_argument, on_trace
from evaluator.exitcodes import ExitCode
from evaluator.lineage import LineageError, LineageStep, NotRecorded, path_from_seed, record_stored
from evaluator.store import CandidateStore, StoreError
from evaluator.untrusted import NAME_CHARS, one_line

NAME = "lineage"
HELP = ("Print the path from the seed to a candidate: each step's id, git commit in <store>/.lineage, name and its "
        "latest result's status, scores and trace.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", metavar="ID", help=ID_HELP)
    add_store_argument(parser)
    parser.add_argument(
        "--record",
        action="store_true",
        help="first record the candidate and any unrecorded ancestors from the store (e.g. in a fresh clone)",
    )
    add_trace_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    where = on_trace(args.trace)
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
    scores = [_scores(args.store, step, where) for step in steps]
    if args.json:
        print(json.dumps({"lineage": [{**asdict(step), **asdict(step_scores)}
                                      for step, step_scores in zip(steps, scores)]}))
        return ExitCode.OK
    rows = [[step.candidate_id or "root", step.commit[:12], one_line(step.name, NAME_CHARS), *step_scores.cells(),
             step_scores.trace or "-"] for step, step_scores in zip(steps, scores)]
    show(table(["id", "commit", "name", *SCORE_HEADERS, "trace"], rows, right=SCORE_COLUMNS))
    return ExitCode.OK


def _scores(store_root: Path, step: LineageStep, where: OnTrace | None) -> Scores:
    """The step's candidate's latest result (on the trace `where` keeps); none for the root, the seed or a file."""
    if step.candidate_id is None:
        return Scores(None, None, None, None, None)
    try:
        return scores_of(find(CandidateStore(store_root), step.candidate_id).latest_result(where=where))
    except StoreError as error:
        raise CommandError(str(error)) from None
