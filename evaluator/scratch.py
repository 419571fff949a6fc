"""The temporary folders of this process (its workers', its zygote's, its evaluator's files), all under one root
folder that the process holds a lock in for as long as it lives.

A process killed before it could remove its folders (a loop's process pool terminating its workers, SIGKILL)
leaves its root behind, its lock released by the kernel: the next process to make a root removes every root
whose owner is gone. A root is made under another name and renamed into place once its lock is held, so that no
process sweeping at that moment can take it for abandoned.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from evaluator.files import remove_tree

ROOT_PREFIX = "eplb-scratch-"
UNREADY_PREFIX = "eplb-unready-"  # a root being made: its owner file not yet locked
OWNER_FILE = ".owner"  # locked by the root's process while it lives
UNREADY_GRACE_S = 60.0  # an unready root younger than this may be one being made; older, its process died making it

_lock = threading.Lock()
_root: Path | None = None
_owner_fd: int | None = None


def scratch_folder(prefix: str) -> Path:
    """A new private folder under this process's root, which is made (and abandoned roots removed) on first use."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=process_root()))


def remove_abandoned_roots() -> list[Path]:
    """Remove the roots in the temporary folder whose process is gone, and unready ones left by a process that died
    making its root; returns those it removed."""
    removed = []
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or Path(entry.path) == _root:
            continue
        if ((entry.name.startswith(ROOT_PREFIX) and _is_abandoned(entry.path))
                or (entry.name.startswith(UNREADY_PREFIX) and _is_old(entry.path))):
            remove_tree(entry.path)
            removed.append(Path(entry.path))
    return removed


def process_root() -> Path:
    """This process's root, made (and abandoned roots removed) on first use; it lasts as long as the process."""
    global _root, _owner_fd
    with _lock:
        if _root is None:
            unready = Path(tempfile.mkdtemp(prefix=f"{UNREADY_PREFIX}{os.getpid()}-"))
            owner = os.open(unready / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(owner, fcntl.LOCK_EX)
            root = unready.with_name(ROOT_PREFIX + unready.name.removeprefix(UNREADY_PREFIX))
            os.rename(unready, root)
            _root, _owner_fd = root, owner
            remove_abandoned_roots()
        return _root


def processes_working_in(root: Path) -> list[int]:
    """Processes on the machine, zombies aside, whose working folder is (or was) in `root`, a process's root: its
    workers, its zygote, its guard and whatever they started, however they left its tree."""
    found = []
    for process in psutil.process_iter():
        try:
            if (process.status() != psutil.STATUS_ZOMBIE
                    and os.readlink(f"/proc/{process.pid}/cwd").startswith(str(root) + os.sep)):
                found.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


def _is_abandoned(root: str) -> bool:
    """True if no process holds the lock in `root`'s owner file, or it has none (a root is renamed into place with
    its lock held, so a root without one belongs to no process)."""
    try:  # not blocking: a named pipe put there by someone else would wait for a writer forever
        owner = os.open(os.path.join(root, OWNER_FILE), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return True
    except OSError:  # another user's root, or not a file
        return False
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: its process lives
        return False
    finally:
        os.close(owner)


def _is_old(unready: str) -> bool:
    try:
        return time.time() - os.lstat(unready).st_mtime > UNREADY_GRACE_S
    except OSError:
        return False


def _forget_in_child() -> None:
    """A forked child makes a root of its own; its copy of the parent's lock goes, so the parent's root is
    abandoned once the parent is gone, whatever its children do."""
    global _root, _owner_fd, _lock
    if _owner_fd is not None:
        os.close(_owner_fd)
    _root, _owner_fd, _lock = None, None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


# Registered on import, before the modules that make folders here register their own clean-up: at exit theirs
# run first (last registered, first run), and this removes what is left.
@atexit.register
def _remove_root() -> None:
    global _root, _owner_fd
    if _root is not None:
        remove_tree(_root)
        if _owner_fd is not None:
            os.close(_owner_fd)
        _root, _owner_fd = None, None
