"""Property tests: any span of whole lines of the seed, used as a SEARCH text, lands where it came from."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from patch_texts import SEED, block, shifted

from evaluator.patch import (
    AmbiguousSearchError,
    ProtectedRegionError,
    apply_parsed,
    parse_patch,
)

LINES = SEED.splitlines(keepends=True)
BLOCK_FIRST = LINES.index("# EVOLVE-BLOCK-START\n") + 1  # 0-based, first editable line
BLOCK_LAST = LINES.index("# EVOLVE-BLOCK-END\n") - 1  # 0-based, last editable line
MAX_SPAN = 25
EXAMPLES = settings(max_examples=150, deadline=None)


def windows(length: int) -> range:
    return range(len(LINES) - length + 1)


def exact_starts(span: list[str]) -> list[int]:
    return [i for i in windows(len(span)) if LINES[i : i + len(span)] == span]


def indentation(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def matches_with_some_shift(window: list[str], span: list[str]) -> bool:
    """Whether `window` is `span` with trailing whitespace dropped and every non-blank line moved equally."""
    shifts = set()
    for have, want in zip(window, span):
        if not want.strip() or not have.strip():
            if want.strip() or have.strip():
                return False
            continue
        if have.strip() != want.strip():
            return False
        shifts.add(indentation(have) - indentation(want))
    return len(shifts) <= 1


def spans(first: int, last: int) -> list[tuple[int, int]]:
    """(start, length) of every span of lines first..last that has a non-blank line."""
    return [
        (start, length)
        for start in range(first, last + 1)
        for length in range(1, min(MAX_SPAN, last + 1 - start) + 1)
        if any(line.strip() for line in LINES[start : start + length])
    ]


BLOCK_SPANS = spans(BLOCK_FIRST, BLOCK_LAST)
UNIQUE_IN_BLOCK = [(s, n) for s, n in BLOCK_SPANS if exact_starts(LINES[s : s + n]) == [s]]
# Spans with non-blank ends that match nowhere else even with whitespace forgiven: the drifted SEARCH
# texts below must land on them alone.
TOLERANTLY_UNIQUE = [
    (s, n)
    for s, n in UNIQUE_IN_BLOCK
    if LINES[s].strip()
    and LINES[s + n - 1].strip()
    and [i for i in windows(n) if matches_with_some_shift(LINES[i : i + n], LINES[s : s + n])] == [s]
]
REPEATED = [(s, n) for s, n in spans(0, len(LINES) - 1) if len(exact_starts(LINES[s : s + n])) > 1]
CROSSING_OR_OUTSIDE = [
    (s, n)
    for s, n in spans(0, len(LINES) - 1)
    if (s < BLOCK_FIRST or s + n - 1 > BLOCK_LAST) and exact_starts(LINES[s : s + n]) == [s]
]


def replacement_for(span: list[str]) -> str:
    """A REPLACE text that changes the span yet keeps the program compiling: one more comment line."""
    depth = min(indentation(line) for line in span if line.strip())
    return "".join(span) + " " * depth + "# changed\n"


def expected_program(start: int, length: int, replace: str) -> str:
    return "".join(LINES[:start]) + replace + "".join(LINES[start + length :])


def test_the_span_pools_are_not_trivial():
    assert len(UNIQUE_IN_BLOCK) > 1000 and len(TOLERANTLY_UNIQUE) > 500
    assert len(REPEATED) > 20 and len(CROSSING_OR_OUTSIDE) > 100


@EXAMPLES
@given(st.sampled_from(UNIQUE_IN_BLOCK))
def test_unique_span_round_trips(span_at):
    start, length = span_at
    span = LINES[start : start + length]
    replace = replacement_for(span)
    application = apply_parsed(SEED, parse_patch(block("".join(span), replace)))
    assert application.program == expected_program(start, length, replace)
    [applied] = application.blocks
    assert (applied.first_line, applied.last_line, applied.tolerance) == (start + 1, start + length, "exact")


@EXAMPLES
@given(st.sampled_from(TOLERANTLY_UNIQUE), st.lists(st.sampled_from([" ", "  ", "\t", " \t "]), min_size=1))
def test_span_with_trailing_whitespace_lands_in_the_same_place(span_at, endings):
    start, length = span_at
    span = LINES[start : start + length]
    search = "".join(line[:-1] + endings[i % len(endings)] + "\n" for i, line in enumerate(span))
    replace = replacement_for(span)
    application = apply_parsed(SEED, parse_patch(block(search, replace)))
    assert application.program == expected_program(start, length, replace)
    [applied] = application.blocks
    assert (applied.first_line, applied.last_line, applied.tolerance) == (start + 1, start + length, "whitespace")


@EXAMPLES
@given(st.sampled_from(TOLERANTLY_UNIQUE), st.integers(min_value=-12, max_value=12).filter(bool))
def test_uniformly_reindented_span_lands_in_the_same_place(span_at, columns):
    start, length = span_at
    span = LINES[start : start + length]
    replace = replacement_for(span)
    depth = min(indentation(line) for line in span if line.strip())
    columns = max(columns, -depth) or -columns  # a span at column 0 can only move right
    search = shifted("".join(span), columns)
    application = apply_parsed(SEED, parse_patch(block(search, shifted(replace, columns))))
    # the REPLACE text, shifted as the SEARCH text was, is shifted back to the program's indentation
    assert application.program == expected_program(start, length, replace)
    [applied] = application.blocks
    direction = "left" if columns > 0 else "right"
    assert (applied.first_line, applied.last_line) == (start + 1, start + length)
    assert applied.tolerance == f"indentation shifted {direction} by {abs(columns)}"


@EXAMPLES
@given(st.sampled_from(CROSSING_OR_OUTSIDE))
def test_span_outside_the_block_is_refused(span_at):
    start, length = span_at
    span = LINES[start : start + length]
    try:
        apply_parsed(SEED, parse_patch(block("".join(span), replacement_for(span))))
    except ProtectedRegionError as error:
        assert f"matches program lines {start + 1}-{start + length}," in str(error)
    else:
        raise AssertionError("an edit outside the EVOLVE-BLOCK was applied")


@EXAMPLES
@given(st.sampled_from(REPEATED))
def test_repeated_span_is_refused_as_ambiguous(span_at):
    start, length = span_at
    span = LINES[start : start + length]
    try:
        apply_parsed(SEED, parse_patch(block("".join(span), replacement_for(span))))
    except AmbiguousSearchError as error:
        assert error.lines == tuple(i + 1 for i in exact_starts(span))
    else:
        raise AssertionError("a SEARCH text found in several places was applied")
