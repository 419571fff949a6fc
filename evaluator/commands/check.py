"""`check`: re-evaluate every accepted candidate on the fixed default trace and fail if one no longer holds."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from evaluator.commands import CommandError, add_device_argument, add_store_argument, whole_number
from evaluator.eplb.default_trace import default_trace
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import ReferenceCache, default_cache_path
from evaluator.exitcodes import ExitCode
from evaluator.regression import SPEED_TOLERANCE, Verdict, judge
from evaluator.store import CandidateStore, StoreError
from evaluator.untrusted import NAME_CHARS, TEXT_CHARS, one_line, quoted
from evaluator.status import Status

NAME = "check"
HELP = "Re-evaluate every accepted candidate on the default trace; exit 1 if one became invalid or regressed."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--repeats", type=whole_number(1, 100), default=2, metavar="N",
                        help="evaluations of each candidate; a speed regression needs all of them below the "
                             "baseline (default: 2)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        accepted = [c for c in CandidateStore(args.store).candidates() if c.accepted]
        baselines = {c.id: c.baseline() for c in accepted}
    except StoreError as error:
        raise CommandError(str(error)) from None
    results: dict[str, list[dict]] = {}
    try:
        from evaluator.evaluation.evaluate import Evaluator  # imports torch: not at the top, which --help runs

        evaluator = Evaluator(default_trace(), Settings(), device=args.device,
                              seed_references=ReferenceCache(default_cache_path()))
    except ValueError as error:  # no such device
        raise CommandError(f"--device {args.device}: {error}") from None
    with evaluator:
        for number, candidate in enumerate(accepted, start=1):
            print(f"[{number}/{len(accepted)}] {candidate.id} {one_line(candidate.meta.get('name') or '', NAME_CHARS)}",
                  file=sys.stderr, flush=True)
            results[candidate.id] = [evaluator.evaluate(candidate.program_path).to_json() for _ in range(args.repeats)]
    verdicts = [judge(c.id, c.meta.get("name"), baselines[c.id], results[c.id]) for c in accepted]
    infra = any(r["status"] == Status.INFRA_ERROR for rs in results.values() for r in rs)
    passed = all(v.holds for v in verdicts)
    if args.json:
        print(json.dumps({"status": "pass" if passed else "fail", "speed_tolerance": SPEED_TOLERANCE,
                          "candidates": [asdict(v) for v in verdicts]}))
    else:
        print(_table(verdicts))
    if infra:
        return ExitCode.INFRA_ERROR
    return ExitCode.OK if passed else ExitCode.REGRESSION


def _table(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "no accepted candidates to check"
    lines = [f"{'id':12}  {'name':36}  {'status':14}  {'balancedness (baseline)':27}  {'speedup (baseline)':20}  verdict"]
    for v in verdicts:
        balance = "-" if v.balancedness is None else f"{v.balancedness:.6f} ({v.baseline_balancedness:.6f})"
        speed = "-" if v.speedup is None else f"{v.speedup:.2f}x ({v.baseline_speedup:.2f}x)"
        lines.append(f"{v.candidate_id:12}  {one_line(v.name or '', 36):36}  {v.status:14}  {balance:27}  {speed:20}  "
                     f"{'holds' if v.holds else 'FAILS'}")
        # a failure's reason is its error, which quotes the program
        lines.extend(quoted(reason, TEXT_CHARS, indent=" " * 14) if v.status != Status.OK else f"{'':14}{reason}"
                     for reason in v.reasons)
    allowed = ", ".join(f"{tolerance:.0%} on {device}" for device, tolerance in SPEED_TOLERANCE.items())
    lines.append(f"a speedup counts as fallen when the top of this run's 95% interval is below the bottom of the "
                 f"baseline's by more than {allowed}")
    return "\n".join(lines)
