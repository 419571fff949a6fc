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
    # the driver tells the evaluator what the worker's processes hold of GPU memory, so the limit holds however they
    # allocate it; where it does not, only torch's allocator in the worker is capped
    gpu_memory_counted: bool = False


@dataclass(frozen=True)
class Unsupported:
    """A returned value that did not cross as an array: anything but an exact torch.Tensor of a wire dtype."""

    type_name: str  # e.g. "list", "numpy.ndarray", "torch.Tensor", "mymodule.MyTensor"
    detail: str  # what it held, e.g. "58 items" or "dtype torch.bfloat16, shape (58, 288)"


Output = Union[np.ndarray, Unsupported]


@dataclass(frozen=True)
class CallResult:
    """What one call of the entry point returned.

    `outputs` holds the elements of a returned tuple or list (or the one returned value otherwise),
    in order: numpy arrays for tensors, `Unsupported` descriptions for anything else.
    """

    call_index: int  # 1 for the worker's first call
    returned_type: str  # type of the returned value, e.g. "tuple"
    returned_length: int | None  # its length when a tuple or list (outputs are empty past MAX_OUTPUTS items)
    outputs: tuple[Output, ...]
    output_devices: tuple[str | None, ...]  # device of each tensor output; None for the others
    input_mutated: bool
    # an earlier call of the same batch whose returned tensors share memory with this one's: the program filled the
    # same tensors again, changing the plan it returned then
    shares_memory_with: int | None = None


@dataclass(frozen=True)
class BatchResult:
    """The calls of one batch, run back to back, and how long they took.

    `claim_ns` is the worker's perf_counter around the calls, the device synchronised before and after; it comes
    from the candidate's process, so it is checked against `round_trip_ns`, the evaluator's own clock from before
    the inputs were written to the reply's arrival (the harness's work on the inputs and outputs included).
    """

    calls: tuple[CallResult, ...]
    claim_ns: int
    round_trip_ns: int
