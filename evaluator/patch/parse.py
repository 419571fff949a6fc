"""Parse an LLM's answer into a `Patch`: ShinkaEvolve answers, bare SEARCH/REPLACE blocks, or a full rewrite."""

from __future__ import annotations

import re
from dataclasses import dataclass

from evaluator.patch.errors import BlockRef, PatchFormatError

SEARCH_MARKER = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE_MARKER = ">>>>>>> REPLACE"

_NAME = re.compile(r"<NAME>(.*?)</NAME>", re.DOTALL)
_DESCRIPTION = re.compile(r"<DESCRIPTION>(.*?)</DESCRIPTION>", re.DOTALL)
_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Edit:
    """One SEARCH/REPLACE block. Both texts are whole lines, each ending in a newline."""

    ref: BlockRef
    search: str
    replace: str


@dataclass(frozen=True)
class Patch:
    """A parsed patch: either `edits` applied in order, or a `rewrite` of the program (or of its EVOLVE-BLOCK)."""

    name: str | None
    description: str | None
    edits: tuple[Edit, ...] = ()
    rewrite: str | None = None

    @property
    def format(self) -> str:
        return "rewrite" if self.rewrite is not None else "edits"


def parse_patch(text: str, *, rewrite: bool = False) -> Patch:
    """Parse `text`; with `rewrite=True` it is a whole new program (a fenced python block, or the text itself)."""
    text = _normalise(text)
    name = _tag(_NAME, text)
    description = _tag(_DESCRIPTION, text)
    if rewrite:
        return Patch(name, description, rewrite=_rewrite_code(text))
    edits = tuple(_parse_blocks(text))
    if not edits:
        raise PatchFormatError(
            f"no SEARCH/REPLACE blocks found. Each edit must look like\n{SEARCH_MARKER}\n(exact lines of the current "
            f"program)\n{DIVIDER}\n(new lines)\n{REPLACE_MARKER}\nwith each marker on a line of its own. "
            "To replace the whole program instead, ask for a full rewrite."
        )
    return Patch(name, description, edits=edits)


def decode_patch(data: bytes) -> str:
    """The text of a patch read as bytes; bytes that are not UTF-8 are a PatchFormatError (a binary file)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PatchFormatError(
            f"the patch is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}): "
            "it looks like a binary file"
        ) from None


def _normalise(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a patch is text (str), not {type(text).__name__}")
    if "\x00" in text:
        raise PatchFormatError(f"the patch contains a NUL byte at offset {text.index(chr(0))}: it looks like a binary file")
    if not text.strip():
        raise PatchFormatError("the patch is empty")
    return text.lstrip("\ufeff").replace("\r\n", "\n")


def _tag(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1).strip() if match else None


def _rewrite_code(text: str) -> str:
    section = _sections(text, "CODE")
    body = section[0][1] if section else text
    fences = _FENCE.findall(body)
    if len(fences) > 1:
        raise PatchFormatError(
            f"the rewrite has {len(fences)} fenced code blocks; put the whole program in one ```python block"
        )
    code = fences[0] if fences else body
    if not fences and not section and (_NAME.search(text) or _DESCRIPTION.search(text)):
        raise PatchFormatError("the rewrite has no program: put it in a ```python block (or between <CODE> tags)")
    if not code.strip():
        raise PatchFormatError("the rewrite's program is empty")
    return code if code.endswith("\n") else code + "\n"


def _sections(text: str, tag: str) -> list[tuple[int, str]]:
    """The bodies between <TAG> and </TAG>, each with the 1-based patch line its body starts on."""
    sections = []
    position = 0
    opening, closing = f"<{tag}>", f"</{tag}>"
    while (start := text.find(opening, position)) != -1:
        body_start = start + len(opening)
        end = text.find(closing, body_start)
        if end == -1:
            line = text.count("\n", 0, start) + 1
            raise PatchFormatError(f"the {opening} section opened on patch line {line} is never closed with {closing}")
        sections.append((text.count("\n", 0, body_start) + 1, text[body_start:end]))
        position = end + len(closing)
    return sections


def _parse_blocks(text: str) -> list[Edit]:
    """SEARCH/REPLACE blocks, from the <DIFF> sections when there are any, else from the whole text."""
    try:
        regions = _sections(text, "DIFF") or [(1, text)]
    except PatchFormatError:
        # An answer cut off mid-block also leaves its <DIFF> open; the unterminated block is the news to report.
        start = text.rfind("<DIFF>")
        _scan_region(text[start + len("<DIFF>") :], text.count("\n", 0, start) + 1, text[:start].count(SEARCH_MARKER))
        raise
    raw_blocks: list[tuple[int, list[str], list[str]]] = []
    for first_line, region in regions:
        raw_blocks.extend(_scan_region(region, first_line, len(raw_blocks)))
    total = len(raw_blocks)
    edits = []
    for number, (patch_line, search_lines, replace_lines) in enumerate(raw_blocks, start=1):
        ref = BlockRef(number, total, patch_line, _first_line(search_lines))
        if not ref.first_line:
            raise PatchFormatError(
                "the SEARCH text is empty; quote the exact lines of the current program to replace "
                "(to insert, quote the line next to the insertion point and repeat it in REPLACE)",
                ref,
            )
        edits.append(Edit(ref, _join(search_lines), _join(replace_lines)))
    return edits


def _first_line(lines: list[str]) -> str:
    return next((line.strip() for line in lines if line.strip()), "")


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _scan_region(region: str, first_line: int, blocks_before: int) -> list[tuple[int, list[str], list[str]]]:
    """Split one region into (patch line, SEARCH lines, REPLACE lines); markers count only alone on a line."""
    blocks: list[tuple[int, list[str], list[str]]] = []
    state = "outside"
    start = 0
    search: list[str] = []
    replace: list[str] = []

    def open_block() -> BlockRef:
        return BlockRef(blocks_before + len(blocks) + 1, None, start, _first_line(search))

    for offset, line in enumerate(region.split("\n")):
        number = first_line + offset
        marker = line.strip()
        if state == "outside":
            if marker == SEARCH_MARKER:
                state, start, search, replace = "search", number, [], []
            elif marker == REPLACE_MARKER:
                raise PatchFormatError(f"patch line {number}: '{REPLACE_MARKER}' with no block open")
        elif state == "search":
            if marker == DIVIDER:
                state = "replace"
            elif marker in (SEARCH_MARKER, REPLACE_MARKER):
                raise PatchFormatError(
                    f"the block has no '{DIVIDER}' line before '{marker}' on patch line {number}", open_block()
                )
            else:
                search.append(line)
        elif marker == REPLACE_MARKER:
            blocks.append((start, search, replace))
            state = "outside"
        elif marker in (SEARCH_MARKER, DIVIDER):
            raise PatchFormatError(
                f"the block is not closed with '{REPLACE_MARKER}' before '{marker}' on patch line {number}",
                open_block(),
            )
        else:
            replace.append(line)
    if state != "outside":
        missing = DIVIDER if state == "search" else REPLACE_MARKER
        raise PatchFormatError(
            f"the block is unterminated: the patch ends before its '{missing}' line (was the answer cut off?)",
            open_block(),
        )
    return blocks
