"""The devices candidates are timed on: one lane per GPU (or one for the CPU), each timing one candidate at a time.

A lane owns its spare workers (warmed up, when given a `WarmUp`) and a lock. The lock is held from a candidate's launch until its
last process is gone, in this process (a thread lock) and across processes (a file lock), so that evaluators
in several processes on one machine, as loops that evaluate in process pools run them, never time two
candidates on one device at once.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluator.sandbox import Limits, WarmUp, WorkerPool


@dataclass(frozen=True)
class Lane:
    """One device: its name ("cuda:0", "cpu"), its spare workers and the file that locks it across processes."""

    name: str
    pool: WorkerPool
    lock_path: Path


class Lanes:
    """The lanes of an evaluator; `hold()` lends a free one. Thread-safe."""

    def __init__(self, limits: Limits, device: str, spares: int, gpus: Sequence[int] | None, lock_folder: Path,
                 warm_up: WarmUp | None = None) -> None:
        lock_folder.mkdir(parents=True, exist_ok=True)
        self.lanes: list[Lane] = []
        for name, worker_device, environment in _devices(device, gpus):
            self.lanes.append(Lane(name, WorkerPool(limits, worker_device, spares, environment, warm_up),
                                   lock_folder / f"{name.replace(':', '-')}.lock"))
        self._free = list(self.lanes)
        self._condition = threading.Condition()

    @contextmanager
    def hold(self) -> Iterator[Lane]:
        """A lane no other thread or process uses until the block ends; waits for one to be free."""
        with self._condition:
            while not self._free:
                self._condition.wait()
            lane = self._free.pop(0)  # the longest free first: candidates spread over every device
        try:
            with open(lane.lock_path, "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
                yield lane
        finally:
            with self._condition:
                self._free.append(lane)
                self._condition.notify()

    def wait_for_spares(self) -> bool:
        """Wait until every lane's spare workers are ready; True if they are."""
        return all([lane.pool.wait_for_spares() for lane in self.lanes])

    def close(self) -> None:
        for lane in self.lanes:
            lane.pool.close()


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
