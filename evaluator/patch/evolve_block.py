"""Where a program may be edited: the lines strictly between `# EVOLVE-BLOCK-START` and `# EVOLVE-BLOCK-END`."""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.patch.errors import PatchError

START = "EVOLVE-BLOCK-START"
END = "EVOLVE-BLOCK-END"


@dataclass(frozen=True)
class EditableRange:
    """0-based line indices: lines first..last (inclusive) may change; the marker lines around them may not."""

    first: int
    last: int

    def contains(self, first: int, last: int) -> bool:
        return self.first <= first and last <= self.last


def is_marker(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("#") and (START in stripped or END in stripped)


def editable_ranges(lines: list[str], source: str = "the parent program") -> list[EditableRange] | None:
    """The EVOLVE-BLOCKs of `source`, or None when it has no markers (then every line is editable)."""
    ranges = []
    open_at = None
    for index, line in enumerate(lines):
        if not is_marker(line):
            continue
        if START in line:
            if open_at is not None:
                raise PatchError(f"{source} opens a second EVOLVE-BLOCK on line {index + 1} before closing one")
            open_at = index
        else:
            if open_at is None:
                raise PatchError(f"{source} closes an EVOLVE-BLOCK on line {index + 1} that was never opened")
            ranges.append(EditableRange(open_at + 1, index - 1))
            open_at = None
    if open_at is not None:
        raise PatchError(f"{source}'s EVOLVE-BLOCK opened on line {open_at + 1} is never closed")
    return ranges or None
