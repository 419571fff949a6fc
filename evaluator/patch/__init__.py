"""The patch engine: from the text an LLM wrote to a candidate program.

`parse_patch` turns an answer into a `Patch`; `apply_patch` applies it to a parent program. Every failure
is a `PatchError` whose message names the block and says what to change.
"""

from evaluator.patch.apply import AppliedBlock, Application, apply_parsed, apply_patch
from evaluator.patch.errors import (
    AmbiguousSearchError,
    BlockRef,
    CandidateSyntaxError,
    IndentationShiftError,
    NoChangeError,
    PatchError,
    PatchFormatError,
    ProtectedRegionError,
    SearchNotFoundError,
)
from evaluator.patch.parse import Edit, Patch, decode_patch, parse_patch

__all__ = [
    "AmbiguousSearchError",
    "AppliedBlock",
    "Application",
    "BlockRef",
    "CandidateSyntaxError",
    "Edit",
    "IndentationShiftError",
    "NoChangeError",
    "Patch",
    "PatchError",
    "PatchFormatError",
    "ProtectedRegionError",
    "SearchNotFoundError",
    "apply_parsed",
    "apply_patch",
    "decode_patch",
    "parse_patch",
]
