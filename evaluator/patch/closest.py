"""When a SEARCH text is found nowhere: the region of the program it most resembles, shown so its author can
see what differs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

_CANDIDATES_REFINED = 5  # windows re-ranked by character similarity after the fast line-level pass


@dataclass(frozen=True)
class ClosestRegion:
    first_line: int  # 1-based, inclusive
    last_line: int
    similarity: float  # 0..1
    listing: str  # the region with line numbers
    diff: str  # unified diff from the SEARCH text to the region


def closest_region(lines: list[str], search: str) -> ClosestRegion | None:
    """The window of the program, as long as the SEARCH text, that is most similar to it."""
    search_lines = [line for line in search.splitlines() if line.strip()] or search.splitlines()
    program = [line.rstrip("\n") for line in lines]
    if not program:
        return None
    size = min(len(search.splitlines()), len(program))
    stripped_search = [line.strip() for line in search_lines]
    search_text = "\n".join(stripped_search)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(stripped_search)
    # Ties on whole lines (every line differs a little, as in a one-line SEARCH with a typo) are broken by the
    # characters the window shares with the SEARCH text, so the refined windows are not just the first ones.
    characters = difflib.SequenceMatcher(autojunk=False)
    characters.set_seq2(search_text)
    ranked = []
    for start in range(len(program) - size + 1):
        window = [line.strip() for line in program[start : start + size]]
        matcher.set_seq1(window)
        characters.set_seq1("\n".join(line for line in window if line))
        ranked.append((matcher.ratio(), characters.quick_ratio(), start))
    ranked.sort(key=lambda item: (-item[0], -item[1], item[2]))

    def character_similarity(start: int) -> float:
        window = "\n".join(line.strip() for line in program[start : start + size] if line.strip())
        return difflib.SequenceMatcher(None, window, search_text, autojunk=False).ratio()

    best = max((start for *_, start in ranked[:_CANDIDATES_REFINED]), key=lambda s: (character_similarity(s), -s))
    region = program[best : best + size]
    width = len(str(best + size))
    listing = "\n".join(f"{best + 1 + i:>{width}} | {line}" for i, line in enumerate(region))
    diff = "\n".join(
        line.rstrip("\n")
        for line in difflib.unified_diff(
            search.splitlines(),
            region,
            fromfile="your SEARCH text",
            tofile=f"program lines {best + 1}-{best + size}",
            lineterm="",
        )
    )
    return ClosestRegion(best + 1, best + size, round(character_similarity(best), 3), listing, diff)
