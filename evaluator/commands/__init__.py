"""One module per subcommand of `python -m evaluator`.

Each module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
A command reports bad input by raising `CommandError`; `evaluator.cli` prints it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from evaluator.exitcodes import ExitCode
from evaluator.paths import DEFAULT_STORE
from evaluator.store import StoreError, require_store_folder


class CommandError(Exception):
    """An error to show the user as-is, with the exit code it ends the command with."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


MAX_SECONDS = 7 * 86400.0  # a week: past this a time limit is a typo (and overflows the waits it sets)
MAX_COUNT = 2**20


def positive_number(maximum: float, minimum: float = 0.0) -> Callable[[str], float]:
    """An argparse type: a finite number above 0, at least `minimum` and at most `maximum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0 and minimum <= value <= maximum):
            low = f"above {minimum:g}" if minimum <= 0 else f"from {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected a number {low} to {maximum:g}, got {text!r}")
        return value

    return parse


def whole_number(minimum: int, maximum: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: a whole number from `minimum` to `maximum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected a whole number from {minimum} to {maximum}, got {text!r}")
        return value

    return parse


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """--store DIR, for every command that reads or writes candidates: a store's folder, or one yet to be made."""
    parser.add_argument(
        "--store", type=_store_folder, default=DEFAULT_STORE, metavar="DIR",
        help="where candidates live (default: ./candidates)"
    )


def _store_folder(text: str) -> Path:
    try:
        require_store_folder(Path(text))
    except StoreError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return Path(text)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device auto|cuda|cpu, for every command that runs candidates."""
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where candidates run: cuda when there is a GPU, else cpu (default: auto)")
