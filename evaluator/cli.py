"""Command-line entry point: `python -m evaluator COMMAND ...` (or `eplb-evaluator COMMAND ...`)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from evaluator.commands import (
    CommandError,
    accept,
    apply,
    bench,
    check,
    diff,
    evaluate,
    export,
    init,
    lineage,
    listing,
    prompt,
    report,
    shinka,
    show,
    trace,
)
from evaluator.exitcodes import ExitCode

COMMANDS = (apply, evaluate, accept, listing, show, diff, lineage, export, report, prompt, check, trace, bench, shinka,
            init)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator",
        description="Apply LLM-written patches to the EPLB seed program, run the candidates in isolation and score them.",
        epilog="Exit codes: "
        + ", ".join(f"{code.value} {code.name.lower().replace('_', ' ')}" for code in ExitCode),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # the evaluator's own fault: never the exit code of a verdict (1 is `check`'s regression)
        traceback.print_exc()
        print(f"error: the evaluator failed (exit code {ExitCode.INFRA_ERROR.value}); the traceback above says where",
              file=sys.stderr)
        return int(ExitCode.INFRA_ERROR)
