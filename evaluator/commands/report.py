"""`report`: a static HTML report of the store, readable offline with no server."""

from __future__ import annotations

import argparse
import os
import webbrowser
from pathlib import Path

from evaluator.commands import CommandError, add_store_argument
from evaluator.exitcodes import ExitCode
from evaluator.report import ReportError, gather, write_report
from evaluator.store import CandidateStore, StoreError

NAME = "report"
HELP = ("Write a static HTML report of the store: a leaderboard and charts per trace, the family tree, and a page per "
        "candidate with its diff, program, results and the load of its plan on each GPU.")
FOLDER = "report"  # the default report's folder, beside the store's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"where to write it (default: {FOLDER}/ beside the store's folder); an earlier report "
                             "there is replaced, a folder holding anything else is refused")
    parser.add_argument("--open", action="store_true", help="open the report's index.html in a web browser")


def run(args: argparse.Namespace) -> int:
    store_root: Path = args.store
    if not store_root.is_dir():
        raise CommandError(f"there is no candidate store at {store_root}: nothing to report (--store names one)")
    out: Path = args.out if args.out is not None else Path(os.path.normpath(store_root / os.pardir / FOLDER))
    _require_outside_store(out, store_root)
    try:
        data = gather(CandidateStore(store_root))
        if not data.candidates:
            raise CommandError(f"the store at {store_root} holds no candidates: nothing to report")
        index = write_report(data, out)
    except (StoreError, ReportError) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write the report in {out}: {error.strerror or error}") from None
    print(f"a report of {len(data.candidates)} candidates: {index}")
    if args.open:
        webbrowser.open(index.resolve().as_uri())
    return ExitCode.OK


def _require_outside_store(out: Path, store_root: Path) -> None:
    """A report in the store's own folder (but under a hidden name) would make the store no store."""
    inside = out.resolve().parent == store_root.resolve() and not out.resolve().name.startswith(".")
    if inside or out.resolve() == store_root.resolve():
        raise CommandError(f"--out {out} is in the candidate store, which holds only candidates; name a folder "
                           "outside it")
