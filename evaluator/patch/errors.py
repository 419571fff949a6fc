"""Why a patch could not be applied. Every message is written to be pasted back into an LLM's next prompt."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockRef:
    """Which SEARCH/REPLACE block an error is about, as the patch's author would find it."""

    number: int  # 1-based, in patch order
    total: int | None  # None while the patch is still being read (a block that never ends)
    patch_line: int  # 1-based line of the block's SEARCH marker in the patch text
    first_line: str  # first non-blank line of the SEARCH text, stripped

    def __str__(self) -> str:
        first = f', SEARCH begins "{self.first_line}"' if self.first_line else ""
        of = f" of {self.total}" if self.total is not None else ""
        return f"block {self.number}{of} (patch line {self.patch_line}{first})"


class PatchError(Exception):
    """A patch could not be turned into a candidate program. `kind` is a stable identifier for machines."""

    kind = "patch_error"

    def __init__(self, message: str, block: BlockRef | None = None) -> None:
        self.block = block
        self.detail = message
        super().__init__(f"{block}: {message}" if block else message)


class PatchFormatError(PatchError):
    """The patch text itself is malformed: empty, binary, no blocks, an unterminated block, ..."""

    kind = "format"


class SearchNotFoundError(PatchError):
    """A SEARCH text matches nowhere in the program, even with whitespace forgiven."""

    kind = "search_not_found"


class AmbiguousSearchError(PatchError):
    """A SEARCH text matches more than once; applying it to the first match would be a guess."""

    kind = "search_ambiguous"

    def __init__(self, message: str, block: BlockRef | None, lines: tuple[int, ...]) -> None:
        super().__init__(message, block)
        self.lines = lines


class IndentationShiftError(PatchError):
    """A block matched with shifted indentation, but its REPLACE text cannot be shifted the same way."""

    kind = "indentation"


class ProtectedRegionError(PatchError):
    """An edit touches text outside the EVOLVE-BLOCK, or the markers themselves."""

    kind = "protected_region"


class NoChangeError(PatchError):
    """The patch applies but leaves the program exactly as it was."""

    kind = "no_change"


class CandidateSyntaxError(PatchError):
    """The patched program does not compile."""

    kind = "syntax_error"

    def __init__(self, message: str, lineno: int | None) -> None:
        super().__init__(message)
        self.lineno = lineno
