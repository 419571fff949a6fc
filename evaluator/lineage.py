"""The family tree of the candidates as a git repository beside the store, so any git tool can browse it.

`<store>/.lineage/` is an ordinary git repository whose only file is `program.py`. Each candidate is one
commit (tagged `candidate/<id>`) whose parent commit is its parent candidate's; a candidate patched from
the seed or from a program file descends from a root commit holding that program (tagged
`root/<sha256 prefix>`, one per distinct program). The repository is derived data: every commit can be
rebuilt from the store, so it is kept out of the project's own history (`<store>/.gitignore`).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

import git
from git.index.fun import write_tree_from_cache
from git.index.typ import BaseIndexEntry, IndexEntry
from git.objects import Blob, Commit, Tree
from gitdb.base import IStream

from evaluator.paths import SEED_PROGRAM
from evaluator.store import META_FILE, PROGRAM_FILE, CandidateStore, StoredCandidate, StoreError, sha256_text

LINEAGE_DIR = ".lineage"
LOCK_FILE = ".lineage.lock"
BRANCH = "main"
CANDIDATE_TAG = "candidate/"
ROOT_TAG = "root/"
TRAILER = "Candidate: "
ROOT_ID_LENGTH = 12
IDENTITY = git.Actor("eplb-evaluator", "eplb-evaluator@localhost")
IGNORED = (f"{LINEAGE_DIR}/", LOCK_FILE)


class LineageError(Exception):
    """The lineage cannot be recorded or read: an unknown candidate, a parent that is missing or has changed."""


class NotRecorded(LineageError):
    """The store has no lineage yet, or the candidate is stored but not recorded in it."""


@dataclass(frozen=True)
class LineageStep:
    candidate_id: str | None  # None for the root: the seed or a program file
    name: str
    commit: str


def lineage_path(store_root: Path) -> Path:
    """Where the lineage repository of the store at `store_root` lives."""
    return Path(store_root) / LINEAGE_DIR


def record(store_root: Path, candidate: StoredCandidate, parent_program: str) -> str:
    """Commit `candidate` under its parent's commit (recording missing ancestors too); returns the commit sha.

    `parent_program` is the source the candidate's patch was applied to; it must match the sha256 in the
    candidate's metadata. Recording a candidate already recorded changes nothing. Safe across processes.
    """
    store_root = Path(store_root)
    with _locked(store_root):
        repo = _open(store_root, create=True)
        existing = _tagged(repo, CANDIDATE_TAG + candidate.id)
        if existing is not None:
            return existing.hexsha
        commit = _record(repo, CandidateStore(store_root), candidate, parent_program, seen=set())
        _show_in_work_tree(repo, commit)
        return commit.hexsha


def path_from_seed(store_root: Path, candidate_id: str) -> list[LineageStep]:
    """The chain of commits from the root (seed or program file) down to the candidate, root first."""
    store_root = Path(store_root)
    candidate = _stored(CandidateStore(store_root), candidate_id, "the candidate")
    repo = _open(store_root, create=False)
    commit = _tagged(repo, CANDIDATE_TAG + candidate.id)
    if commit is None:
        raise NotRecorded(f"candidate {candidate.id} is not recorded in the lineage at {lineage_path(store_root)}")
    steps = []
    while True:
        steps.append(_step(commit))
        if not commit.parents:
            return steps[::-1]
        commit = commit.parents[0]


def record_stored(store_root: Path, candidate_id: str) -> str:
    """Record a stored candidate whose parent program is found again: in the store, the seed, or its file."""
    store = CandidateStore(Path(store_root))
    candidate = _stored(store, candidate_id, "the candidate")
    return record(store.root, candidate, find_parent_program(store, candidate))


def _record(
    repo: git.Repo, store: CandidateStore, candidate: StoredCandidate, parent_program: str, seen: set[str]
) -> Commit:
    existing = _tagged(repo, CANDIDATE_TAG + candidate.id)
    if existing is not None:
        return existing
    if candidate.id in seen:
        raise LineageError(f"candidate {candidate.id}'s parents in {store.root} form a cycle")
    seen.add(candidate.id)
    parent_ref = _parent_ref(candidate)
    if sha256_text(parent_program) != parent_ref["sha256"]:
        raise LineageError(
            f"the parent program given for candidate {candidate.id} does not match the sha256 in its "
            f"{candidate.path / META_FILE} (parent.sha256 {parent_ref['sha256']})"
        )
    if parent_ref.get("kind") == "candidate":
        parent = _stored(store, str(parent_ref.get("id")), f"the parent of candidate {candidate.id}")
        parent_commit = _record(repo, store, parent, find_parent_program(store, parent), seen)
    else:
        parent_commit = _root(repo, parent_program, parent_ref)
    name = str(candidate.meta.get("name") or "(unnamed)")
    description = str(candidate.meta.get("description") or "").strip()
    message = "\n\n".join(part for part in (name, description, TRAILER + candidate.id) if part) + "\n"
    commit = _commit(repo, candidate.program(), message, parent_commit, _created_at(candidate))
    _tag(repo, CANDIDATE_TAG + candidate.id, commit)
    return commit


def _root(repo: git.Repo, program: str, parent_ref: dict[str, object]) -> Commit:
    """The root commit holding `program`, made the first time a candidate descends from it."""
    sha = sha256_text(program)
    tag = ROOT_TAG + sha[:ROOT_ID_LENGTH]
    existing = _tagged(repo, tag)
    if existing is not None:
        return existing
    where = parent_ref.get("path") or "(unknown path)"
    subject = f"seed: {where}" if parent_ref.get("kind") == "seed" else f"program file: {where}"
    commit = _commit(repo, program, f"{subject}\n\nProgram-sha256: {sha}\n", None, None)
    _tag(repo, tag, commit)
    return commit


def _commit(repo: git.Repo, program: str, message: str, parent: Commit | None, when: datetime | None) -> Commit:
    """A commit of a tree holding only program.py, written straight to the object database (no hooks, no signing)."""
    data = program.encode("utf-8")
    blob = repo.odb.store(IStream(Blob.type, len(data), BytesIO(data)))
    entry = IndexEntry.from_base(BaseIndexEntry((0o100644, blob.binsha, 0, PROGRAM_FILE)))
    tree_sha, _ = write_tree_from_cache([entry], repo.odb, slice(0, 1))
    return Commit.create_from_tree(
        repo,
        Tree(repo, tree_sha),
        message,
        parent_commits=[parent] if parent is not None else [],
        head=False,
        author=IDENTITY,
        committer=IDENTITY,
        author_date=when,
        commit_date=when,
    )


def _show_in_work_tree(repo: git.Repo, commit: Commit) -> None:
    """Point `main` and the work tree at the latest recorded commit, so a plain `git log` shows its family."""
    repo.git.reset("--hard", "--quiet", commit.hexsha)


def find_parent_program(store: CandidateStore, candidate: StoredCandidate) -> str:
    """The program `candidate`'s patch was applied to: its parent candidate's, or the seed or program file as it was
    then. Raises LineageError where it cannot be found, or has changed since."""
    parent_ref = _parent_ref(candidate)
    kind = parent_ref.get("kind")
    if kind == "candidate":
        return _stored(store, str(parent_ref.get("id")), f"the parent of candidate {candidate.id}").program()
    if kind not in ("seed", "file") or not parent_ref.get("path"):
        raise LineageError(
            f"candidate {candidate.id} has an unknown parent kind {kind!r} in {candidate.path / META_FILE}"
        )
    return root_program(parent_ref, f"candidate {candidate.id}'s")


def root_program(parent_ref: Mapping[str, object], whose: str) -> str:
    """The seed or program file a candidate's metadata `parent` names, as it was when `whose` ("candidate X's")
    candidate was made; raises LineageError where it cannot be read or has changed since."""
    # the seed wherever it is installed, a program file where it was
    path = SEED_PROGRAM if parent_ref.get("kind") == "seed" else Path(str(parent_ref.get("path")))
    try:
        program = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LineageError(f"{whose} parent program {path} cannot be read: {error}") from None
    if sha256_text(program) != parent_ref.get("sha256"):
        raise LineageError(f"{whose} parent program {path} has changed since the candidate was made")
    return program


def _parent_ref(candidate: StoredCandidate) -> dict[str, object]:
    parent = candidate.meta.get("parent")
    if not isinstance(parent, dict) or not isinstance(parent.get("sha256"), str):
        raise LineageError(f"candidate {candidate.id} has no parent with a sha256 in {candidate.path / META_FILE}")
    return parent


def _stored(store: CandidateStore, candidate_id: str, what: str) -> StoredCandidate:
    try:
        return store.get(candidate_id)
    except StoreError as error:
        raise LineageError(f"{what} cannot be found: {error}") from None


def _created_at(candidate: StoredCandidate) -> datetime | None:
    """The candidate's creation time, so commit dates say when each candidate was made (None: now)."""
    try:
        when = datetime.fromisoformat(str(candidate.meta.get("created_at")))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _tag(repo: git.Repo, tag: str, commit: Commit) -> None:
    """A lightweight tag written as a ref file, so no git configuration (tag signing) can get in the way."""
    git.Reference.create(repo, f"refs/tags/{tag}", commit)


def _tagged(repo: git.Repo, tag: str) -> Commit | None:
    try:
        return git.TagReference(repo, f"refs/tags/{tag}").commit
    except ValueError:  # no such tag
        return None


def _step(commit: Commit) -> LineageStep:
    message = str(commit.message)
    candidate_id = None
    for line in message.splitlines():
        if line.startswith(TRAILER):
            candidate_id = line[len(TRAILER) :].strip()
    return LineageStep(candidate_id, message.split("\n", 1)[0], commit.hexsha)


def _open(store_root: Path, create: bool) -> git.Repo:
    """The lineage repository, opened by its own path only: never a repository that happens to enclose it."""
    path = lineage_path(store_root)
    environment = _git_environment(path)
    if not (path / ".git").is_dir():
        if not create:
            raise NotRecorded(f"no lineage at {path}: no candidate of {store_root} has been recorded")
        path.mkdir(parents=True, exist_ok=True)
        command = git.Git(str(path))
        command.update_environment(**environment)
        command.init("--quiet", f"--initial-branch={BRANCH}")
        _ignore_in_enclosing_repository(Path(store_root))
    try:
        repo = git.Repo(str(path), search_parent_directories=False)
    except git.InvalidGitRepositoryError:
        raise LineageError(f"{path} is not a git repository") from None
    repo.git.update_environment(**environment)
    return repo


def _git_environment(path: Path) -> dict[str, str]:
    """Name the repository explicitly, so GIT_DIR or GIT_INDEX_FILE inherited from a caller cannot redirect git."""
    git_dir = path.resolve() / ".git"
    return {"GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(path.resolve()), "GIT_INDEX_FILE": str(git_dir / "index")}


def _ignore_in_enclosing_repository(store_root: Path) -> None:
    """A store committed in a project must not carry the lineage in as an embedded repository."""
    ignore = store_root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("".join(line + "\n" for line in IGNORED), encoding="utf-8")


@contextmanager
def _locked(store_root: Path) -> Iterator[None]:
    store_root.mkdir(parents=True, exist_ok=True)
    with open(store_root / LOCK_FILE, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
