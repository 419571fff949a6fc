"""Writing files that readers in other processes may open at any moment, and removing folders whatever a
candidate left in them."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write `path` under a hidden name beside it and rename it into place, so readers see all or nothing.
    Raises OSError, leaving `path` as it was."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.incoming")
    try:
        write_durably(staging, text)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_durably(path: Path, text: str) -> None:
    """Write `path` and flush it to disk before returning. Raises OSError."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Remove the folder `path` and everything in it; True if it is gone. Never raises.

    A candidate's processes may leave any tree in their folder: nested deeper than Python's recursion limit
    (shutil.rmtree on Python 3.11 raises RecursionError there, past `ignore_errors`) or than a path can be
    long, with folders they made unreadable or unwritable. So every folder is first moved up to be a direct
    child of `path`, emptied there and removed: no recursion, no long paths, one open folder at a time.
    Symbolic links are removed, never followed, and no mode is changed through one.
    """
    top = os.fspath(path)
    try:
        _let_owner_in(top)
        top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return _removed(top)
    try:
        pending, emptied = [None], []  # folders to empty, by name in `top` (None: `top` itself)
        while pending:
            name = pending.pop()
            try:
                _empty_into(top_fd, name, pending)
            except OSError:
                pass
            if name is not None:
                emptied.append(name)
        for name in emptied:
            try:
                os.rmdir(name, dir_fd=top_fd)
            except OSError:
                pass
    finally:
        os.close(top_fd)
    return _removed(top)


def _let_owner_in(name: str, dir_fd: int | None = None) -> None:
    """Give the folder `name` (of `dir_fd`) read, write and search permission for its owner, unless it is a
    link or not a folder. The mode is set through a descriptor of the folder itself, so a folder swapped for a
    link after it was listed changes nothing elsewhere. Raises OSError."""
    folder = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{folder}", stat.S_IRWXU)
    finally:
        os.close(folder)


def _empty_into(top_fd: int, name: str | None, pending: list[str | None]) -> None:
    """Unlink the files of folder `name` of `top_fd` and move its folders up into `top_fd`, onto `pending`."""
    if name is None:
        folder_fd = os.dup(top_fd)
    else:
        _let_owner_in(name, top_fd)
        folder_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top_fd)
    try:
        with os.scandir(folder_fd) as entries:
            children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for child, is_folder in children:
            try:
                if not is_folder:
                    os.unlink(child, dir_fd=folder_fd)
                    continue
                # Moving a folder to another parent rewrites its "..", which needs write permission on it.
                _let_owner_in(child, folder_fd)
                moved = f".removing-{secrets.token_hex(8)}"
                os.rename(child, moved, src_dir_fd=folder_fd, dst_dir_fd=top_fd)
                pending.append(moved)
            except OSError:
                pass
    finally:
        os.close(folder_fd)


def _removed(top: str) -> bool:
    try:
        os.rmdir(top)
    except FileNotFoundError:
        return True
    except NotADirectoryError:  # a link or a file put in the folder's place
        try:
            os.unlink(top)
        except OSError:
            pass
    except OSError:
        pass
    return not os.path.lexists(top)
