"""Writing files that readers in other processes may open at any moment."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write `path` under a hidden name beside it and rename it into place, so readers see all or nothing.
    Raises OSError, leaving `path` as it was."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.incoming")
    try:
        write_durably(staging, text)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_durably(path: Path, text: str) -> None:
    """Write `path` and flush it to disk before returning. Raises OSError."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
