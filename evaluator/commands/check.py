"""`check`: re-evaluate every accepted candidate on the fixed default trace and fail if one no longer holds."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from evaluator.commands import CommandError, add_device_argument, add_store_argument, whole_number
from evaluator.commands.cluster import add_backend_arguments, on_cluster, open_cluster
from evaluator.commands.stored import shown_name
from evaluator.commands.terminal import Activity, show, table
from evaluator.eplb.default_trace import default_trace
from evaluator.evaluation.settings import Settings
from evaluator.exitcodes import ExitCode
from evaluator.regression import SPEED_TOLERANCE, Verdict, judge
from evaluator.store import CandidateStore, StoreError
from evaluator.untrusted import NAME_CHARS, TEXT_CHARS, one_line, quoted
from evaluator.status import Status

if TYPE_CHECKING:
    from rich.console import RenderableType

NAME = "check"
HELP = "Re-evaluate every accepted candidate on the default trace; exit 1 if one became invalid or regressed."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--repeats", type=whole_number(1, 100), default=2, metavar="N",
                        help="evaluations of each candidate; a speed regression needs all of them below the "
                             "baseline (default: 2)")
    add_device_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        accepted = [c for c in CandidateStore(args.store).candidates() if c.accepted]
        baselines = {c.id: c.baseline() for c in accepted}
    except StoreError as error:
        raise CommandError(str(error)) from None
    results: dict[str, list[dict]] = {}
    with Activity(f"checking {len(accepted)} accepted candidates", len(accepted)) as activity:
        if on_cluster(args):
            evaluator = open_cluster(args, default_trace(), Settings(), announce=activity.doing)
        else:
            try:
                from evaluator.evaluation.evaluate import Evaluator  # imports torch: not at the top, which --help runs

                evaluator = Evaluator(default_trace(), Settings(), device=args.device, announce=activity.doing)
            except ValueError as error:  # no such device
                raise CommandError(f"--device {args.device}: {error}") from None
        with evaluator:
            for candidate in accepted:
                label = f"{candidate.id} {shown_name(candidate.meta)}"
                with activity.doing(f"checking {label}"):
                    results[candidate.id] = [evaluator.evaluate(candidate.program_path).to_json()
                                             for _ in range(args.repeats)]
                activity.done(f"{label}: {', '.join(result['status'] for result in results[candidate.id])}")
    verdicts = [judge(c.id, c.meta.get("name"), baselines[c.id], results[c.id]) for c in accepted]
    infra = any(r["status"] == Status.INFRA_ERROR for rs in results.values() for r in rs)
    passed = all(v.holds for v in verdicts)
    if args.json:
        print(json.dumps({"status": "pass" if passed else "fail", "speed_tolerance": SPEED_TOLERANCE,
                          "candidates": [asdict(v) for v in verdicts]}))
    else:
        show(*_table(verdicts))
    if infra:
        return ExitCode.INFRA_ERROR
    return ExitCode.OK if passed else ExitCode.REGRESSION


def _table(verdicts: list[Verdict]) -> list[RenderableType | str]:
    """The verdicts as a table, then the reasons of each candidate that has some."""
    if not verdicts:
        return ["no accepted candidates to check"]
    rows = [[v.candidate_id, one_line(v.name or "", NAME_CHARS), v.status,
             "-" if v.balancedness is None else f"{v.balancedness:.6f} ({v.baseline_balancedness:.6f})",
             "-" if v.speedup is None else f"{v.speedup:.2f}x ({v.baseline_speedup:.2f}x)",
             "holds" if v.holds else "FAILS"] for v in verdicts]
    shown: list[RenderableType | str] = [
        table(["id", "name", "status", "balancedness (baseline)", "speedup (baseline)", "verdict"], rows)]
    for v in verdicts:
        if v.reasons:
            shown.append(f"{v.candidate_id}:")
            # a failure's reason is its error, which quotes the program
            shown.extend(quoted(reason, TEXT_CHARS, indent="  ") if v.status != Status.OK else f"  {reason}"
                         for reason in v.reasons)
    allowed = ", ".join(f"{tolerance:.0%} on {device}" for device, tolerance in SPEED_TOLERANCE.items())
    shown.append(f"a speedup counts as fallen when the top of this run's 95% interval is below the bottom of the "
                 f"baseline's by more than {allowed}")
    return shown
