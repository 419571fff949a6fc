"""Find where a SEARCH text sits in a program: exactly, else forgiving trailing whitespace and a uniform
indentation shift. A match is always of whole lines, and it must be unique."""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.patch.errors import AmbiguousSearchError, BlockRef, IndentationShiftError


@dataclass(frozen=True)
class Match:
    """Lines first..last (0-based, inclusive) of the program are replaced by `replacement` (whole lines)."""

    first: int
    last: int
    replacement: str
    tolerance: str  # "exact", or what was forgiven


def find_match(lines: list[str], search: str, replace: str, ref: BlockRef) -> Match | None:
    """Locate `search` in `lines` (the program split after each newline, newlines kept); None if absent."""
    search_lines = search.splitlines(keepends=True)
    exact = _exact_matches(lines, search_lines)
    if exact:
        _require_unique(exact, ref, "")
        return Match(exact[0], exact[0] + len(search_lines) - 1, replace, "exact")
    return _tolerant_match(lines, search_lines, replace.splitlines(keepends=True), ref)


def _exact_matches(lines: list[str], search_lines: list[str]) -> list[int]:
    count = len(search_lines)
    head = search_lines[0]
    return [i for i in range(len(lines) - count + 1) if lines[i] == head and lines[i : i + count] == search_lines]


def _require_unique(starts: list[int], ref: BlockRef, how: str) -> None:
    if len(starts) > 1:
        where = ", ".join(str(start + 1) for start in starts)
        raise AmbiguousSearchError(
            f"the SEARCH text matches {len(starts)} places{how} (starting on program lines {where}); "
            "add surrounding lines to the SEARCH text so it matches exactly one place",
            ref,
            tuple(start + 1 for start in starts),
        )


def _trim_blank_ends(lines: list[str]) -> tuple[int, int]:
    """How many blank lines the list starts and ends with (all-blank lists count once)."""
    lead = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    trail = next((i for i, line in enumerate(reversed(lines)) if line.strip()), 0)
    return lead, trail


def _tolerant_match(
    lines: list[str], search_lines: list[str], replace_lines: list[str], ref: BlockRef
) -> Match | None:
    lead, trail = _trim_blank_ends(search_lines)
    core = search_lines[lead : len(search_lines) - trail]
    shifts = {}
    for start in range(len(lines) - len(core) + 1):
        shift = _shift(lines[start : start + len(core)], core)
        if shift is not None:
            shifts[start] = shift
    if not shifts:
        return None
    _require_unique(sorted(shifts), ref, " once whitespace is forgiven")
    start, (added, removed) = next(iter(shifts.items()))
    # Blank lines the SEARCH text had at its ends were dropped from the match; drop as many from REPLACE.
    replace_lead, replace_trail = _trim_blank_ends(replace_lines)
    replace_core = replace_lines[min(lead, replace_lead) : len(replace_lines) - min(trail, replace_trail)]
    replacement = "".join(_reindent(line, added, removed, ref) for line in replace_core)
    return Match(start, start + len(core) - 1, replacement, _describe(added, removed))


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _shift(window: list[str], core: list[str]) -> tuple[str, str] | None:
    """(added, removed) indentation turning every non-blank `core` line into its `window` line, or None."""
    shift = None
    for program_line, search_line in zip(window, core):
        program_text, search_text = program_line.rstrip(), search_line.rstrip()
        if not search_text:
            if program_text:
                return None
            continue
        if program_text.lstrip(" \t") != search_text.lstrip(" \t"):
            return None
        have, want = _indent(program_text), _indent(search_text)
        if have.endswith(want):
            line_shift = (have[: len(have) - len(want)], "")
        elif want.endswith(have):
            line_shift = ("", want[: len(want) - len(have)])
        else:
            return None
        if shift is None:
            shift = line_shift
        elif shift != line_shift:
            return None
    return shift or ("", "")


def _reindent(line: str, added: str, removed: str, ref: BlockRef) -> str:
    if not line.strip():
        return line
    if removed:
        if not line.startswith(removed):
            raise IndentationShiftError(
                f"the SEARCH text matched with {len(removed)} fewer leading characters of indentation, but the "
                f"REPLACE line {line.strip()!r} is not indented that much; re-indent the block to match the program",
                ref,
            )
        line = line[len(removed) :]
    return added + line


def _describe(added: str, removed: str) -> str:
    if added:
        return f"indentation shifted right by {len(added)}"
    if removed:
        return f"indentation shifted left by {len(removed)}"
    return "whitespace"
