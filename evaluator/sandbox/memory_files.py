"""Host memory that no resident set shows: files kept in memory (a memfd, a file on tmpfs or in /dev/shm).

Pages of such a file are memory for as long as the file lives, whether or not any process maps them: a program can
write gigabytes into a memfd, or into a file in its folder where that is on tmpfs, and hold none of it resident. The
worker's memory limit counts these files besides its processes' resident sets (Linux): every one a process of the tree
holds open, and every file in the worker's folder when that folder is in memory, each counted once, at its
allocated size. Pages of such a file that a process also maps count in its resident set too.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterable
from pathlib import Path

_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "hugetlbfs"})
_MEMFD_PREFIX = "/memfd:"
_BLOCK_BYTES = 512  # the unit of st_blocks
_LEAST_ENTRY_BYTES = 4096  # an inode and its directory entry take memory too: an empty file counts as a page


def memory_file_bytes(pids: Iterable[int], folder: Path | None, skip: frozenset[tuple[int, int]],
                      most_bytes: int) -> int:
    """The allocated bytes of the memory-backed files the processes `pids` hold open and of the files in `folder`
    (one in memory, `in_memory`, or None): each file once, none whose (device, inode) is in `skip`. The count stops
    once it passes `most_bytes`, so that a folder of a million files costs a walk only as far as that."""
    seen: set[tuple[int, int]] = set(skip)
    total = 0

    def count(info: os.stat_result) -> None:
        nonlocal total
        key = (info.st_dev, info.st_ino)
        if key not in seen:
            seen.add(key)
            total += max(info.st_blocks * _BLOCK_BYTES, _LEAST_ENTRY_BYTES)

    for pid in pids:
        for info in _open_memory_files(pid):
            count(info)
    if folder is not None:
        for info in _walk(folder):
            count(info)
            if total > most_bytes:
                break
    return total


def file_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of an open file, as `skip` names it."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _open_memory_files(pid: int) -> Iterable[os.stat_result]:
    """The memory-backed regular files process `pid` has open (none if it is gone)."""
    folder = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(folder)
    except OSError:
        return
    for descriptor in descriptors:
        path = f"{folder}/{descriptor}"
        try:
            target = os.readlink(path)
            if not target.startswith("/") or (target.startswith("/dev/") and not target.startswith("/dev/shm/")):
                continue  # a pipe, a socket, a device: no file's pages
            info = os.stat(path)
        except OSError:  # closed since it was listed
            continue
        if stat.S_ISREG(info.st_mode) and (target.startswith(_MEMFD_PREFIX) or info.st_dev in _memory_devices()):
            yield info


def _walk(folder: Path) -> Iterable[os.stat_result]:
    """Every entry below `folder` but the folder itself, links not followed."""
    pending = [str(folder)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield info
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)


def in_memory(path: Path) -> bool:
    """Whether `path` lies on a filesystem kept in memory."""
    try:
        return os.stat(path).st_dev in _memory_devices()
    except OSError:
        return False


@functools.cache
def _memory_devices() -> frozenset[int]:
    """The device numbers of this machine's mounted memory filesystems (read once: the mounts a worker's files can
    be on do not change while the evaluator runs)."""
    devices = set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        fields = line.split()
        try:
            kind = fields[fields.index("-") + 1]
            major, minor = fields[2].split(":")
        except (ValueError, IndexError):
            continue
        if kind in _MEMORY_FILESYSTEMS:
            devices.add(os.makedev(int(major), int(minor)))
    return frozenset(devices)
