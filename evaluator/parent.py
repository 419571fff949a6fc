"""The program a patch is applied to: the seed, a program file, or a stored candidate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator.patch.errors import PatchError
from evaluator.patch.evolve_block import editable_ranges
from evaluator.paths import SEED_PATH_RECORDED, SEED_PROGRAM
from evaluator.store import CandidateStore, StoreError, sha256_text


class ParentError(ValueError):
    """The parent named cannot be found or read, or its EVOLVE-BLOCK markers do not pair up."""


@dataclass(frozen=True)
class ParentProgram:
    source: str
    label: str  # for people: "the seed", "candidate 3f2a...", "file x.py"
    ref: dict[str, Any]  # for metadata: kind, id or path, sha256


def resolve_parent(spec: str | None, store: CandidateStore) -> ParentProgram:
    """`spec` is None (the seed), a path to a program file, or a stored candidate's id (or unique prefix).
    Raises ParentError when it names nothing readable, or a program whose EVOLVE-BLOCK markers do not pair up."""
    parent = _find_parent(spec, store)
    try:
        editable_ranges(parent.source.splitlines(), parent.label)
    except PatchError as error:
        raise ParentError(str(error)) from None
    return parent


def _find_parent(spec: str | None, store: CandidateStore) -> ParentProgram:
    if spec is None:
        source = _read(SEED_PROGRAM, "the seed program")
        return ParentProgram(source, "the seed", {"kind": "seed", "path": SEED_PATH_RECORDED, "sha256": sha256_text(source)})
    path = Path(spec)
    if path.is_file():
        source = _read(path, "parent program")
        return ParentProgram(source, f"file {spec}", {"kind": "file", "path": spec, "sha256": sha256_text(source)})
    try:
        candidate = store.get(spec)
    except StoreError as error:
        raise ParentError(f"parent {spec!r} is neither a program file nor a stored candidate ({error})") from None
    source = _read(candidate.program_path, f"candidate {candidate.id}'s program")
    return ParentProgram(
        source, f"candidate {candidate.id}", {"kind": "candidate", "id": candidate.id, "sha256": sha256_text(source)}
    )


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ParentError(f"cannot read {what} at {path}: {error}") from None
