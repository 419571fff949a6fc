"""The devices candidates are timed on: one lane per GPU (or one for the CPU), each timing one candidate at a time.

A lane owns its spare workers (warmed up, when given a `WarmUp`) and a lock. The lock is held from a candidate's
launch until its last process has exited, in this process (a thread lock) and across processes (a file lock
in the cache folder), so that evaluators in several processes on one machine, as loops that evaluate in
process pools run them, never time two candidates on one device at once. Processes take turns only when they
share the cache folder (`EPLB_EVALUATOR_CACHE`) and name the GPU alike (`CUDA_VISIBLE_DEVICES`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluator.sandbox import Failure, FailureKind, Limits, SandboxFailure, WarmUp, WorkerPool

# Descriptors of the lock files held in this process. A forked child closes its copies, so that the lock is
# released when this process lets it go, whatever the child does.
_held_lock_fds: set[int] = set()
_LOCK_ATTEMPTS = 5  # a lock file replaced while we waited for it is opened again this many times at most


@dataclass(frozen=True)
class Lane:
    """One device: its name ("cuda:0", "cpu"), its spare workers and the file that locks it across processes."""

    name: str
    pool: WorkerPool
    lock_path: Path


class Holding:
    """A lane lent by `Lanes.take`; `release` gives it back, once, from any thread."""

    def __init__(self, lane: Lane, lock_fd: int, give_back: Callable[[Lane], None]) -> None:
        self.lane = lane
        self._lock_fd: int | None = lock_fd
        self._give_back = give_back
        self._released = threading.Lock()

    def release(self) -> None:
        if not self._released.acquire(blocking=False):
            return
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            _held_lock_fds.discard(fd)
            os.close(fd)  # the file lock goes with the descriptor
        self._give_back(self.lane)


class Lanes:
    """The lanes of an evaluator; `take()` lends a free one. Thread-safe."""

    def __init__(self, limits: Limits, device: str, spares: int, gpus: Sequence[int] | None, lock_folder: Path,
                 warm_up: WarmUp | None = None) -> None:
        self.lanes: list[Lane] = []
        for name, worker_device, environment in _devices(device, gpus):
            self.lanes.append(Lane(name, WorkerPool(limits, worker_device, spares, environment, warm_up),
                                   lock_folder / f"{name.replace(':', '-')}.lock"))
        self._free = list(self.lanes)
        self._condition = threading.Condition()

    def take(self, name: str | None = None) -> Holding:
        """A lane no other thread or process uses until the holding is released: the one called `name`, else
        the longest free (candidates spread over every device). Waits for it to be free. Raises
        `SandboxFailure` (infra_error) when the lock file cannot be opened."""
        with self._condition:
            while not (lane := self._first_free(name)):
                self._condition.wait()
            self._free.remove(lane)
        try:
            return Holding(lane, _lock(lane.lock_path), self._give_back)
        except OSError as error:
            self._give_back(lane)
            raise SandboxFailure(Failure(
                FailureKind.INFRA_ERROR,
                f"cannot lock device {lane.name} through {lane.lock_path}: {error}. The cache folder must be a "
                "writable folder of this user (set EPLB_EVALUATOR_CACHE to choose another)")) from None

    def wait_for_spares(self) -> bool:
        """Wait until every lane's spare workers are ready; True if they are."""
        return all([lane.pool.wait_for_spares() for lane in self.lanes])

    def close(self) -> None:
        for lane in self.lanes:
            lane.pool.close()

    def _first_free(self, name: str | None) -> Lane | None:
        return next((lane for lane in self._free if name is None or lane.name == name), None)

    def _give_back(self, lane: Lane) -> None:
        with self._condition:
            self._free.append(lane)
            self._condition.notify_all()


def _lock(path: Path) -> int:
    """An open descriptor of `path` holding its exclusive lock; waits for the lock. Raises OSError.

    The lock file lives where candidates could reach it: it is never followed through a link, and one that was
    removed or replaced while we waited is opened again, so that every holder locks the same file.
    """
    for _ in range(_LOCK_ATTEMPTS):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                _held_lock_fds.add(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, f"the lock file kept being replaced ({_LOCK_ATTEMPTS} attempts)")


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _close_inherited_locks() -> None:
    for fd in _held_lock_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_lock_fds.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _devices(device: str, gpus: Sequence[int] | None) -> list[tuple[str, str, dict[str, str]]]:
    """(lane name, the workers' device, their extra environment) for each lane."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        if gpus:
            raise ValueError("GPUs were named, but candidates run on the CPU")
        return [("cpu", "cpu", {})]
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(f"device 'cuda' was asked for, but torch {torch.__version__} sees no GPU")
    chosen = list(range(count)) if gpus is None else list(gpus)
    if not chosen or any(not 0 <= index < count for index in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"GPUs must be distinct indices among the {count} visible, got {list(gpus or [])}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",") if visible else [str(index) for index in range(count)]
    # each lane's workers see one GPU, as their device 0
    return [(f"cuda:{physical[index]}", "cuda", {"CUDA_VISIBLE_DEVICES": physical[index]}) for index in chosen]
