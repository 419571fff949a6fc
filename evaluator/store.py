"""The candidate store: one folder per candidate, named by a hash of its program, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROGRAM_FILE = "program.py"
PATCH_FILE = "patch.diff"
META_FILE = "meta.json"
RESULTS_DIR = "results"
ID_LENGTH = 12
MIN_PREFIX = 4


class StoreError(Exception):
    """A candidate id that names nothing (or several candidates), or a store that cannot be read."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def candidate_id(program: str) -> str:
    """Ids come from the program's content, so the same program is always the same candidate."""
    return sha256_text(program)[:ID_LENGTH]


@dataclass(frozen=True)
class StoredCandidate:
    id: str
    path: Path
    meta: dict[str, Any]

    @property
    def program_path(self) -> Path:
        return self.path / PROGRAM_FILE

    def program(self) -> str:
        return self.program_path.read_text(encoding="utf-8")

    def add_result(self, result: dict[str, Any]) -> Path:
        """Keep one evaluation's result beside the candidate, as results/<UTC time>-<random>.json."""
        folder = self.path / RESULTS_DIR
        folder.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{stamp}-{secrets.token_hex(3)}.json"
        staging = folder / f".{path.name}.incoming"
        _write(staging, json.dumps(result, indent=2) + "\n")
        os.replace(staging, path)
        return path


class CandidateStore:
    """Candidates under `root`, one folder each: program.py, patch.diff (if any) and meta.json."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get(self, id_or_prefix: str) -> StoredCandidate:
        """The candidate whose id is `id_or_prefix` or starts with it (at least 4 characters, unambiguous)."""
        key = id_or_prefix.strip().lower()
        if len(key) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in key):
            raise StoreError(f"{id_or_prefix!r} is not a candidate id (at least {MIN_PREFIX} hexadecimal characters)")
        matches = [path for path in self._folders() if path.name.startswith(key)]
        if not matches:
            raise StoreError(f"no candidate {id_or_prefix!r} in {self.root}")
        if len(matches) > 1:
            names = ", ".join(sorted(path.name for path in matches))
            raise StoreError(f"candidate id {id_or_prefix!r} is ambiguous in {self.root}: {names}")
        return self._read(matches[0])

    def add(self, program: str, patch_text: str | None, meta: dict[str, Any]) -> tuple[StoredCandidate, bool]:
        """Store a candidate unless its program is already there; returns it and whether it was new.

        The folder appears complete or not at all: it is written under a hidden name and renamed into place.
        """
        cid = candidate_id(program)
        final = self.root / cid
        if final.is_dir():
            return self._read(final), False
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{cid}-", dir=self.root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a candidate folder is as readable as the store
            _write(staging / PROGRAM_FILE, program)
            if patch_text is not None:
                _write(staging / PATCH_FILE, patch_text)
            _write(staging / META_FILE, json.dumps({"id": cid, **meta}, indent=2) + "\n")
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
                return self._read(final), False  # another process stored the same program first
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self._read(final), True

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [path for path in self.root.iterdir() if path.is_dir() and not path.name.startswith(".")]

    def _read(self, folder: Path) -> StoredCandidate:
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StoreError(f"candidate {folder.name} in {self.root} is unreadable: {error}") from None
        return StoredCandidate(folder.name, folder, meta)


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
