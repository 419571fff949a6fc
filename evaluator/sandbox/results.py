"""Plain data a worker hands back: who it is, and what one call returned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from evaluator.sandbox.confinement import Confinement


@dataclass(frozen=True)
class WorkerInfo:
    """A ready worker: its process and the device it initialised."""

    pid: int
    device: str  # "cuda" or "cpu": where inputs live and where the candidate runs
    card: str  # torch.cuda.get_device_name(), or the CPU model
    torch_version: str
    cuda_version: str | None  # torch.version.cuda; None for a CPU-only torch
    confinement: Confinement
    ready_monotonic: float  # time.monotonic() in the evaluator when the ready message arrived


@dataclass(frozen=True)
class Unsupported:
    """A returned value that did not cross as an array: anything but an exact torch.Tensor of a wire dtype."""

    type_name: str  # e.g. "list", "numpy.ndarray", "torch.Tensor", "mymodule.MyTensor"
    detail: str  # what it held, e.g. "58 items" or "dtype torch.bfloat16, shape (58, 288)"


Output = Union[np.ndarray, Unsupported]


@dataclass(frozen=True)
class CallResult:
    """What one call of the entry point returned, and how long it took.

    `outputs` holds the elements of a returned tuple or list (or the one returned value otherwise),
    in order: numpy arrays for tensors, `Unsupported` descriptions for anything else.
    `worker_ns` is the worker's perf_counter around the call, device-synchronised; `cuda_event_ns`
    is the CUDA-event time of the same span (None on CPU). Both come from the candidate's process,
    so check them against `evaluator_wall_ns`, the round trip measured by the evaluator.
    """

    call_index: int
    returned_type: str  # type of the returned value, e.g. "tuple"
    returned_length: int | None  # its length when a tuple or list (outputs are empty past MAX_OUTPUTS items)
    outputs: tuple[Output, ...]
    output_devices: tuple[str | None, ...]  # device of each tensor output; None for the others
    worker_ns: int
    cuda_event_ns: int | None
    evaluator_wall_ns: int
    input_mutated: bool
