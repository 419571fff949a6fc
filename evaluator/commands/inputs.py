"""Reading the files a command is given, with errors that say which file and what is wrong."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from evaluator.commands import CommandError


def describe(path: str) -> str:
    """How an error names an input argument: its path, or standard input for `-`."""
    return "standard input" if path == "-" else path


def read_bytes_argument(path: str, what: str) -> bytes:
    """The bytes of `path` (or of standard input for "-"); a clear CommandError when it cannot be read."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except IsADirectoryError:
        raise CommandError(f"{what} {describe(path)} is a directory, not a file") from None
    except OSError as error:
        raise CommandError(f"cannot read {what} {describe(path)}: {error.strerror}") from None


def path_is(path: Path, kind: Callable[[Path], bool]) -> bool:
    """`kind(path)` (`Path.is_file`, say), false for a path the system refuses to look up (a name too long)."""
    try:
        return kind(path)
    except OSError:
        return False
