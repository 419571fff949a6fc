"""Apply a parsed `Patch` to a parent program: blocks in order, each on the result of the one before."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from evaluator.patch.closest import USEFUL_SIMILARITY, closest_region
from evaluator.patch.errors import (
    CandidateSyntaxError,
    NoChangeError,
    PatchError,
    ProtectedRegionError,
    SearchNotFoundError,
)
from evaluator.patch.evolve_block import editable_ranges, is_marker
from evaluator.patch.match import find_match
from evaluator.patch.parse import Edit, Patch, parse_patch
from evaluator.patch.protected_names import require_protected_names


@dataclass(frozen=True)
class AppliedBlock:
    number: int
    first_line: int  # 1-based lines of the text the block was applied to
    last_line: int
    tolerance: str  # "exact", or what whitespace was forgiven


@dataclass(frozen=True)
class Application:
    """The candidate program and how each block was applied."""

    program: str
    blocks: tuple[AppliedBlock, ...]


def apply_patch(parent: str, patch: str | Patch, *, rewrite: bool = False) -> str:
    """Apply `patch` (text or parsed) to `parent` and return the candidate program; raises a `PatchError`."""
    return apply_parsed(parent, patch if isinstance(patch, Patch) else parse_patch(patch, rewrite=rewrite)).program


def apply_parsed(parent: str, patch: Patch) -> Application:
    """Apply a parsed patch, reporting per block where it matched and what was forgiven."""
    crlf = "\r\n" in parent
    text = parent.replace("\r\n", "\n")
    final_newline = text.endswith("\n") or not text
    lines = (text if final_newline else text + "\n").splitlines(keepends=True)
    if patch.rewrite is not None:
        lines = _rewrite(lines, patch.rewrite)
        blocks: tuple[AppliedBlock, ...] = ()
    else:
        blocks = tuple(_apply_edit(lines, edit) for edit in patch.edits)
    program = "".join(lines)
    if not final_newline:
        program = program[:-1]
    if program == text:
        raise NoChangeError("the patch leaves the program exactly as it was; change what the description promises")
    _require_compiles(program)
    require_protected_names(text, program)
    return Application(program.replace("\n", "\r\n") if crlf else program, blocks)


def _apply_edit(lines: list[str], edit: Edit) -> AppliedBlock:
    """Apply one block to `lines` in place."""
    match = find_match(lines, edit.search, edit.replace, edit.ref)
    if match is None:
        raise SearchNotFoundError(_not_found_message(lines, edit.search), edit.ref)
    _require_editable(lines, match.first, match.last, edit)
    lines[match.first : match.last + 1] = match.replacement.splitlines(keepends=True)
    return AppliedBlock(edit.ref.number, match.first + 1, match.last + 1, match.tolerance)


def _not_found_message(lines: list[str], search: str) -> str:
    message = "the SEARCH text was not found in the program, not even with whitespace forgiven."
    fix = "Copy the SEARCH text exactly from the current program."
    region = closest_region(lines, search)
    if region is None:
        return f"{message}\n{fix}"
    if region.similarity < USEFUL_SIMILARITY:
        return (f"{message}\nNothing in the program resembles it closely (the most alike, program lines "
                f"{region.first_line}-{region.last_line}, are {region.similarity:.0%} similar): it was probably "
                f"written against another version of the program. {fix}")
    return (
        f"{message}\nThe closest region is program lines {region.first_line}-{region.last_line} "
        f"({region.similarity:.0%} similar):\n{region.listing}\n"
        f"Differences from your SEARCH text to those lines:\n{region.diff}\n{fix}"
    )


def _require_editable(lines: list[str], first: int, last: int, edit: Edit) -> None:
    ranges = editable_ranges(lines)
    if ranges is not None and not any(r.contains(first, last) for r in ranges):
        raise ProtectedRegionError(
            f"the SEARCH text matches program lines {first + 1}-{last + 1}, which reach outside the EVOLVE-BLOCK "
            "(or include its marker lines); only the lines between '# EVOLVE-BLOCK-START' and "
            "'# EVOLVE-BLOCK-END' may change",
            edit.ref,
        )
    marker = next((line for line in edit.replace.splitlines() if is_marker(line)), None)
    if marker is not None:
        raise ProtectedRegionError(f"the REPLACE text adds an EVOLVE-BLOCK marker line ({marker.strip()!r})", edit.ref)


def _rewrite(lines: list[str], code: str) -> list[str]:
    """The parent with its EVOLVE-BLOCK replaced by the rewrite's (or the whole program, if it has no block)."""
    ranges = editable_ranges(lines)
    new_lines = code.splitlines(keepends=True)
    if ranges is None:
        return new_lines
    if len(ranges) > 1:
        raise ProtectedRegionError("the parent has several EVOLVE-BLOCKs; a rewrite must go through SEARCH/REPLACE edits")
    block = ranges[0]
    before, after = lines[: block.first], lines[block.last + 1 :]
    try:
        new_ranges = editable_ranges(new_lines, "the rewrite")
    except PatchError as error:  # a marker without its partner: the rewrite, not the parent, is at fault
        raise ProtectedRegionError(str(error)) from None
    if new_ranges is None:
        return before + new_lines + after
    if len(new_ranges) > 1:
        raise ProtectedRegionError("the rewrite has several EVOLVE-BLOCKs; the program has one")
    new_block = new_ranges[0]
    new_before, new_after = new_lines[: new_block.first], new_lines[new_block.last + 1 :]
    for mine, theirs, where in ((before, new_before, "before"), (after, new_after, "after")):
        if _outside_text(mine) != _outside_text(theirs):
            diff = "\n".join(difflib.unified_diff(_outside_text(mine), _outside_text(theirs), "program", "rewrite", lineterm=""))
            raise ProtectedRegionError(
                f"the rewrite changes the text {where} the EVOLVE-BLOCK, which must stay as it is:\n{diff}"
            )
    return before + new_lines[new_block.first : new_block.last + 1] + after


def _outside_text(lines: list[str]) -> list[str]:
    """Lines compared with trailing whitespace and blank lines at either end forgiven."""
    stripped = [line.rstrip() for line in lines]
    while stripped and not stripped[0]:
        stripped.pop(0)
    while stripped and not stripped[-1]:
        stripped.pop()
    return stripped


def _require_compiles(program: str) -> None:
    try:
        compile(program, "<candidate>", "exec", dont_inherit=True)
    except SyntaxError as error:
        line = (error.text or "").rstrip("\n")
        where = f"line {error.lineno}" if error.lineno else "an unknown line"
        shown = f":\n    {line.strip()}" if line.strip() else ""
        raise CandidateSyntaxError(
            f"the patched program does not compile: {error.msg} at {where}{shown}", error.lineno
        ) from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise CandidateSyntaxError(f"the patched program does not compile: {error}", None) from None

