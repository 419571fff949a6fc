"""The candidate store: one folder per candidate, named by a hash of its program, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from evaluator import __version__
from evaluator.eplb.default_trace import DEFAULT_SEED
from evaluator.eplb.problem import Problem
from evaluator.files import remove_tree, write_atomically, write_durably
from evaluator.status import Status

PROGRAM_FILE = "program.py"
PATCH_FILE = "patch.diff"
META_FILE = "meta.json"
RESULTS_DIR = "results"
ACCEPTED_FILE = "accepted.json"
ID_LENGTH = 12
MIN_PREFIX = 4
DEFAULT_SOURCE = "default"  # the `workload.source` of results on the fixed, public default trace
HOLDOUT_SOURCE = "holdout"  # and on a held-out trace, drawn afresh from a secret key
# and on the default trace of another problem shape: the default generator's, from the default trace's seed
DEFAULT_FOR_SHAPE_SOURCE = f"synthetic(seed={DEFAULT_SEED})"
# What makes two results measure the same thing: `digest` is the trace's data, so an edited trace file (or
# the same path seen from another folder) is another workload
WORKLOAD_KEYS = ("source", "digest", "windows", "steps_per_window", "problem")
# The workload a baseline is measured on, since `check` re-measures there: the default trace, default shape
BASELINE_WORKLOAD: Mapping[str, Any] = MappingProxyType({"source": DEFAULT_SOURCE, "problem": asdict(Problem())})
ABANDONED_STAGING_S = 3600  # a writer's hidden folder older than this belongs to no live writer
_STAGING_PREFIX = ".incoming-"
_CANDIDATE_FOLDER = re.compile(f"[0-9a-f]{{{ID_LENGTH}}}")
_STAMP = "%Y%m%dT%H%M%S%fZ"  # a result file's name: when it was stored, in UTC


class StoreError(Exception):
    """A candidate id that names nothing (or several candidates), or a store that cannot be read."""


def sha256_text(text: str) -> str:
    """The hex sha256 of `text` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def candidate_id(program: str) -> str:
    """Ids come from the program's content, so the same program is always the same candidate."""
    return sha256_text(program)[:ID_LENGTH]


def trace_source(workload: Mapping[str, Any]) -> str:
    """The trace a result's `workload` was measured on: DEFAULT_SOURCE for the default trace of any problem shape,
    HOLDOUT_SOURCE for a held-out one, else its source (a trace file's path, or "?" where none is recorded)."""
    source = str(workload.get("source") or "?")
    return DEFAULT_SOURCE if source == DEFAULT_FOR_SHAPE_SOURCE else source


def score_in(result: Mapping[str, Any], key: str) -> float | None:
    """`result[key]` as a number; None where a result file (edited by hand, say) holds anything else."""
    value = result.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def same_workload(result: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """Whether `result` was measured on `workload`, comparing those of `WORKLOAD_KEYS` that `workload` gives."""
    measured = result.get("workload") or {}
    return all(measured.get(key) == workload[key] for key in WORKLOAD_KEYS if key in workload)


def measured_alike(result: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    """Whether `result` was measured on the device and card `here` names, with the `software` versions it gives."""
    software = result.get("software") or {}
    return (result.get("device"), result.get("card")) == (here["device"], here["card"]) and all(
        software.get(name) == version for name, version in here["software"].items())


@dataclass(frozen=True)
class StoredCandidate:
    id: str
    path: Path
    meta: dict[str, Any]

    @property
    def program_path(self) -> Path:
        return self.path / PROGRAM_FILE

    def program(self) -> str:
        """The program's text; raises StoreError, naming the file, where it cannot be read."""
        try:
            return self.program_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StoreError(f"cannot read candidate {self.id}'s program {self.program_path}: "
                             f"{getattr(error, 'strerror', None) or error}") from None

    def add_result(self, result: dict[str, Any]) -> Path:
        """Keep one evaluation's result beside the candidate, as results/<UTC time>-<random>.json."""
        folder = self.path / RESULTS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{_utc_stamp()}-{secrets.token_hex(3)}.json"
        write_atomically(path, json.dumps(result, indent=2) + "\n")
        return path

    def results(self) -> list[dict[str, Any]]:
        """Every stored result, oldest first. An unreadable result file is a StoreError naming it."""
        return [result for _, result in self.result_files()]

    def result_files(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every stored result with its file, oldest first (`measured_at` reads the time from the file's name)."""
        folder = self.path / RESULTS_DIR
        if not folder.is_dir():
            return []
        files = sorted(path for path in folder.glob("*.json") if not path.name.startswith("."))
        return [(path, _read_json_object(path, "result")) for path in files]

    def latest_result(self, workload: Mapping[str, Any] | None = None, here: Mapping[str, Any] | None = None,
                      where: Callable[[Mapping[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The newest result that is not an infra_error, on `workload` if given (see `same_workload`), measured
        `here` if given (see `measured_alike`) and for which `where` holds if given."""
        for result in reversed(self.results()):
            if (result.get("status") != Status.INFRA_ERROR and (workload is None or same_workload(result, workload))
                    and (here is None or measured_alike(result, here)) and (where is None or where(result))):
                return result
        return None

    @property
    def accepted(self) -> bool:
        return (self.path / ACCEPTED_FILE).is_file()

    def acceptance(self) -> dict[str, Any] | None:
        """The acceptance record (result, accepted_at, evaluator_version), or None if not accepted."""
        path = self.path / ACCEPTED_FILE
        return _read_json_object(path, "acceptance record") if path.is_file() else None

    def baseline(self) -> dict[str, Any] | None:
        """The result recorded when the candidate was accepted: its regression baseline."""
        record = self.acceptance()
        if record is None:
            return None
        baseline = record.get("result")
        if not isinstance(baseline, dict):
            raise StoreError(f"{self.path / ACCEPTED_FILE} has no 'result' object")
        for key in ("balancedness_score", "speedup"):
            if not isinstance(baseline.get(key), (int, float)) or isinstance(baseline.get(key), bool):
                raise StoreError(f"{self.path / ACCEPTED_FILE}: its result has no number {key!r}")
        return baseline


def require_store_folder(root: Path) -> None:
    """Raise StoreError unless `root` is missing (a store yet to be made) or a folder of candidate folders and hidden
    entries (the lineage, writers' staging): anything else is not a store, and nothing is read from or written there."""
    try:
        if not root.exists():
            return
        if not root.is_dir():
            raise StoreError(f"{root} is a file, not a candidate store")
        strangers = sorted(path.name for path in root.iterdir() if not path.name.startswith(".")
                           and not (_CANDIDATE_FOLDER.fullmatch(path.name) and path.is_dir()))
    except OSError as error:
        raise StoreError(f"cannot use {str(root)[:200]} as a candidate store: {error.strerror}") from None
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise StoreError(f"{root} is not a candidate store: besides candidate folders it holds {shown}. Name a "
                         "store's folder (./candidates by default) or one that does not exist yet")


class CandidateStore:
    """Candidates under `root`, one folder each: program.py, patch.diff (if any), meta.json, results/ and,
    once accepted, accepted.json. Raises StoreError for a `root` that is not a store (`require_store_folder`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        require_store_folder(self.root)

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

    def candidates(self) -> Iterator[StoredCandidate]:
        """Every stored candidate, in id order; half-written (hidden) folders are not candidates."""
        for folder in sorted(self._folders()):
            yield self._read(folder)

    def add(self, program: str, patch_text: str | None, meta: dict[str, Any]) -> tuple[StoredCandidate, bool]:
        """Store a candidate unless its program is already there; returns it and whether it was new.

        The folder appears complete or not at all: it is written under a hidden name and renamed into place.
        """
        cid = candidate_id(program)
        final = self.root / cid
        if final.is_dir():
            return self._read(final), False
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_staging()
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{cid}-", dir=self.root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a candidate folder is as readable as the store
            write_durably(staging / PROGRAM_FILE, program)
            if patch_text is not None:
                write_durably(staging / PATCH_FILE, patch_text)
            write_durably(staging / META_FILE, json.dumps({"id": cid, **meta}, indent=2) + "\n")
            try:
                os.rename(staging, final)
            except OSError:
                if not final.is_dir():
                    raise
                return self._read(final), False  # another process stored the same program first
        finally:
            if staging.exists():
                remove_tree(staging)
        return self._read(final), True

    def accept(self, candidate: StoredCandidate, result: Mapping[str, Any]) -> Path:
        """Mark `candidate` accepted with `result` as its regression baseline; returns accepted.json's path.

        Only an `ok` result measured on `BASELINE_WORKLOAD` can be a baseline, since `check` re-measures there.
        Accepting again replaces the baseline.
        """
        status = result.get("status")
        if status != Status.OK:
            detail = f": {result.get('error')}" if result.get("error") else ""
            raise StoreError(f"candidate {candidate.id} cannot be accepted: its result is {status!r}, not 'ok'{detail}")
        if not same_workload(result, BASELINE_WORKLOAD):
            workload = result.get("workload") or {}
            raise StoreError(
                f"candidate {candidate.id} cannot be accepted: its result was measured on workload "
                f"{workload.get('source')!r} with problem shape {workload.get('problem')}; a baseline must be "
                f"measured on the {DEFAULT_SOURCE!r} trace with the default problem shape (no --workload, "
                "--holdout or shape option)"
            )
        record = {
            "id": candidate.id,
            "accepted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "evaluator_version": __version__,
            "result": dict(result),
        }
        path = candidate.path / ACCEPTED_FILE
        write_atomically(path, json.dumps(record, indent=2) + "\n")
        return path

    def _remove_abandoned_staging(self) -> None:
        """Remove the hidden folders of writers that were killed mid-write, once no live writer can own them."""
        abandoned_before = time.time() - ABANDONED_STAGING_S
        for path in self.root.glob(f"{_STAGING_PREFIX}*"):
            try:
                if path.is_dir() and path.stat().st_mtime < abandoned_before:
                    remove_tree(path)
            except OSError:
                pass  # another writer removed it first

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [path for path in self.root.iterdir() if path.is_dir() and _CANDIDATE_FOLDER.fullmatch(path.name)]

    def _read(self, folder: Path) -> StoredCandidate:
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StoreError(f"candidate {folder.name} in {self.root} is unreadable: {error}") from None
        return StoredCandidate(folder.name, folder, meta)


def measured_at(result_file: Path) -> datetime | None:
    """When the result in `result_file` was stored, from its name; None for a name `add_result` did not give."""
    try:
        return datetime.strptime(result_file.name.split("-", 1)[0], _STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime(_STAMP)


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StoreError(f"{what} {path} is unreadable: {error}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{what} {path} is not a JSON object")
    return data
