"""One module per subcommand of `python -m evaluator`.

Each module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
A command reports bad input by raising `CommandError`; `evaluator.cli` prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluator.exitcodes import ExitCode
from evaluator.paths import DEFAULT_STORE


class CommandError(Exception):
    """An error to show the user as-is, with the exit code it ends the command with."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """--store DIR, for every command that reads or writes candidates."""
    parser.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, metavar="DIR", help="where candidates live (default: ./candidates)"
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device auto|cuda|cpu, for every command that runs candidates."""
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where candidates run: cuda when there is a GPU, else cpu (default: auto)")
