"""GPU memory as the driver counts it (NVML), read by the evaluator, never reported by a worker: what a worker's
processes hold on each GPU however they allocated it (through torch's allocator or around it), and what a GPU has
free."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_opened: list[DriverCount | None] = []  # at most one entry: this process's NVML, or None where it has none


class DriverCount:
    """NVML, initialised once per process; safe to use from several threads."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(nvml.nvmlDeviceGetCount())]

    def held(self, owns: Callable[[int], bool]) -> dict[int, int] | None:
        """The bytes the processes whose pids `owns` holds hold, per GPU (NVML's index) where they hold any; None when
        the driver does not say how much one of them holds (as under some virtualisation). `owns` is asked only about
        the processes using a GPU."""
        held: dict[int, int] = {}
        try:
            for index, handle in enumerate(self._handles):
                for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if owns(process.pid):
                        if process.usedGpuMemory is None:
                            return None
                        held[index] = held.get(index, 0) + int(process.usedGpuMemory)
        except self._nvml.NVMLError:
            return None
        return held

    def free(self, index: int) -> int | None:
        """The bytes GPU `index` has free; None if the driver will not say."""
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handles[index]).free)
        except self._nvml.NVMLError:
            return None


def driver_count() -> DriverCount | None:
    """This process's NVML, or None where there is none (no nvidia-ml-py, no driver, no GPU)."""
    with _lock:
        if not _opened:
            _opened.append(_open())
        return _opened[0]


def _open() -> DriverCount | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return DriverCount(pynvml)
    except Exception:  # the package, its library or a device missing: nothing counts GPU memory here
        return None


os.register_at_fork(after_in_child=_opened.clear)  # a forked child opens its own
