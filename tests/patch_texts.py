"""Texts the patch engine's tests build on: the seed, the seed patch, SEARCH/REPLACE blocks, shifted code."""

from __future__ import annotations

from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM

SEED = SEED_PROGRAM.read_text(encoding="utf-8")
SEED_PATCH = (PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff").read_text(encoding="utf-8")


def block(search: str, replace: str) -> str:
    """One SEARCH/REPLACE block; `search` and `replace` are whole lines, each ending in a newline."""
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def shifted(text: str, columns: int) -> str:
    """Every non-blank line of `text` moved `columns` spaces right (left when negative)."""
    return "".join(
        (" " * columns + line if columns > 0 else line[-columns:]) if line.strip() else line
        for line in text.splitlines(keepends=True)
    )
