"""When a SEARCH text is found nowhere: the region of the program it most resembles, and how it differs, sized for
the next prompt.

Lines the SEARCH text shares exactly (whitespace aside) with the program vote for where it was meant to start, rarer
lines more; the few best starts, and for a short SEARCH text (a typo shares no line) every start, are ranked by how
similar their lines are. Linear in the program for a long SEARCH text: an answer written against another version of
the program is placed in milliseconds, not seconds.
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from dataclasses import dataclass

SHORT_SEARCH_LINES = 8  # a SEARCH text this short is compared with every window of the program
_RANKED_STARTS = 8  # starts, by votes, whose windows are compared line by line
USEFUL_SIMILARITY = 0.5  # below this, no region is shown: it would mislead more than help
LISTED_LINES = 24  # of the region, around its first difference
DIFF_LINES = 16
LINE_CHARS = 100


@dataclass(frozen=True)
class ClosestRegion:
    first_line: int  # 1-based, inclusive
    last_line: int
    similarity: float  # 0..1, of the region's lines to the SEARCH text's
    listing: str  # at most LISTED_LINES of the region with line numbers, around the first difference
    diff: str  # a unified diff from the SEARCH text to the region, at most DIFF_LINES lines


def closest_region(lines: list[str], search: str) -> ClosestRegion | None:
    """The window of the program, as long as the SEARCH text, that is most similar to it; None if the program is
    empty."""
    program = [line.rstrip("\n") for line in lines]
    wanted = search.splitlines()
    if not program or not wanted:
        return None
    size = min(len(wanted), len(program))
    stripped_program = [line.strip() for line in program]
    stripped_wanted = [line.strip() for line in wanted]
    starts = _candidate_starts(stripped_program, stripped_wanted, size)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(stripped_wanted)
    joined_wanted = "\n".join(stripped_wanted)

    def rank(start: int, exact: bool) -> tuple[float, float, int]:
        """Lines alike first; for a short SEARCH text, ties (each line differs a little, as with a one-line typo) go
        to the characters shared, bounded from above (`quick_ratio`) for every start, exactly for the few best."""
        window = stripped_program[start:start + size]
        matcher.set_seq1(window)
        if size > SHORT_SEARCH_LINES:  # characters of long windows would take seconds
            return matcher.ratio(), 0.0, -start
        characters = difflib.SequenceMatcher(None, "\n".join(window), joined_wanted, autojunk=False)
        return matcher.ratio(), characters.ratio() if exact else characters.quick_ratio(), -start

    best = max(sorted(starts, key=lambda start: rank(start, exact=False))[-_RANKED_STARTS:],
               key=lambda start: rank(start, exact=True))
    region = program[best:best + size]
    return ClosestRegion(best + 1, best + size, round(_alike(stripped_program[best:best + size], stripped_wanted), 3),
                         _listing(region, wanted, best), _diff(wanted, region, best))


def _alike(window: list[str], wanted: list[str]) -> float:
    """How similar the region is to the SEARCH text: by characters for a short one (a typo leaves no line alike),
    by lines for a long one (characters would take seconds)."""
    if len(wanted) <= SHORT_SEARCH_LINES:
        return difflib.SequenceMatcher(None, "\n".join(window), "\n".join(wanted), autojunk=False).ratio()
    return difflib.SequenceMatcher(None, window, wanted, autojunk=False).ratio()


def _candidate_starts(program: list[str], wanted: list[str], size: int) -> list[int]:
    """Where the SEARCH text may have been meant to start: every start for a short one, else the starts its shared
    lines vote for most (each match weighs one over how often its line occurs), else the first."""
    last_start = len(program) - size
    if len(wanted) <= SHORT_SEARCH_LINES:
        return list(range(last_start + 1))
    positions: dict[str, list[int]] = defaultdict(list)
    for number, line in enumerate(program):
        if line:
            positions[line].append(number)
    votes: Counter[int] = Counter()
    for offset, line in enumerate(wanted):
        for number in positions.get(line, ()):
            votes[min(max(number - offset, 0), last_start)] += 1 / len(positions[line])
    return [start for start, _ in votes.most_common(_RANKED_STARTS)] or [0]


def _listing(region: list[str], wanted: list[str], first: int) -> str:
    """Up to `LISTED_LINES` of the region, numbered, from a few lines before its first difference."""
    differs = next((k for k, (have, want) in enumerate(zip(region, wanted)) if have.strip() != want.strip()), 0)
    start = max(0, min(differs - 3, len(region) - LISTED_LINES))
    shown = region[start:start + LISTED_LINES]
    width = len(str(first + len(region)))
    listing = [f"{first + start + 1 + k:>{width}} | {_clipped(line)}" for k, line in enumerate(shown)]
    if len(region) > len(shown):
        listing.append(f"({len(region) - len(shown)} more lines of the region not shown)")
    return "\n".join(listing)


def _diff(wanted: list[str], region: list[str], first: int) -> str:
    lines = [_clipped(line) for line in difflib.unified_diff(
        wanted, region, fromfile="your SEARCH text", tofile=f"program lines {first + 1}-{first + len(region)}",
        lineterm="")]
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"({len(lines) - DIFF_LINES} more lines of differences not shown)"]
    return "\n".join(lines)


def _clipped(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 3] + "..."
