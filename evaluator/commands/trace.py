"""`trace`: summarise the trace a score would be measured on."""

from __future__ import annotations

import argparse
import json
import sys

from evaluator.commands.workload import add_workload_arguments, problem_from, trace_from
from evaluator.eplb.trace_summary import render_text, summarize
from evaluator.exitcodes import ExitCode

NAME = "trace"
HELP = "Summarise a trace: the embedded default, a fresh held-out one (--holdout) or a file (--workload)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    problem = problem_from(args)
    summary = summarize(trace_from(args, problem), problem.num_groups)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        sys.stdout.write(render_text(summary))
    return ExitCode.OK
