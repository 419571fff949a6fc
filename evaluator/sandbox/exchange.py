"""The shared memory a batch's inputs and outputs cross in, one region per worker (a sealed `memfd`).

The evaluator writes a batch's inputs from the region's start, each at an aligned offset; the worker copies the
outputs of every call, raw, after them, and names their dtypes, shapes and offsets in its reply on the channel.
Nothing crosses packed, pickled or twice: a batch costs its calls, two copies and two small frames.

The worker's process can write anywhere in the region at any time, so the evaluator treats it as untrusted
memory: it copies every output out at once (as soon as the reply has come and its round trip is stamped, before the
next inputs go in), reads only ranges that lie, in order and apart, between the outputs' start and the region's end,
and never reads back what it wrote. The region cannot be shrunk (a sealed size), so no read of it faults.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ALIGNMENT = 64  # of every array's offset: any dtype's view of it is aligned
MAX_DIMS = 8
# numpy dtype names that may cross; each has the same name as its torch dtype
WIRE_DTYPES = frozenset(
    {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
)
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class ExchangeError(ValueError):
    """An output's description names memory the evaluator must not read, or an array it cannot be."""


def aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def counted_bytes(shape: Sequence[int], itemsize: int) -> int:
    """The bytes an array of `shape` counts for against a bound: its size with every empty dimension taken as 1,
    so that no shape passes by being empty (numpy refuses some of those, e.g. [0, 2**62, 4])."""
    return math.prod(max(size, 1) for size in shape) * itemsize


def create(size: int) -> int:
    """A new region of `size` bytes (no memory is used until it is written), its size sealed; the descriptor."""
    fd = os.memfd_create("eplb-exchange", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Exchange:
    """The evaluator's view of one worker's region."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self._memory = mmap.mmap(fd, self.size)

    def write_inputs(self, arrays: Sequence[np.ndarray]) -> tuple[list[dict[str, Any]], int]:
        """Put `arrays` one after another from the region's start, each aligned: the descriptions a batch frame
        carries, and where the outputs may begin."""
        descriptions, offset = [], 0
        for array in arrays:
            if offset + array.nbytes > self.size:
                raise ValueError(f"inputs of {offset + array.nbytes} bytes do not fit the {self.size}-byte exchange")
            np.ndarray(array.shape, array.dtype, buffer=self._memory, offset=offset)[...] = array
            descriptions.append({"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset})
            offset = aligned(offset + array.nbytes)
        return descriptions, offset

    def read_outputs(self, described: Sequence[dict[str, Any]], start: int) -> list[np.ndarray]:
        """Copies of the arrays `described` ({dtype, shape, offset} each), which must lie in order, apart, from
        `start` to the region's end; raises `ExchangeError` naming the first that does not."""
        arrays = []
        lowest = start
        for index, spec in enumerate(described):
            dtype, shape, offset = _checked(index, spec)
            end = offset + counted_bytes(shape, dtype.itemsize)
            if offset < lowest or end > self.size:
                raise ExchangeError(f"array {index} spans bytes {offset} to {end}, outside {lowest} to {self.size} "
                                    "(the outputs' part of the exchange, after the arrays before it)")
            arrays.append(np.frombuffer(self._memory, dtype, math.prod(shape), offset).reshape(shape).copy())
            lowest = end
        return arrays

    def close(self) -> None:
        try:
            self._memory.close()
        except BufferError:  # a view of it is still alive somewhere: the mapping goes with the last one
            pass


def _checked(index: int, spec: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    if not isinstance(spec, dict):
        raise ExchangeError(f"array {index} is described by {spec!r:.200}")
    dtype, shape, offset = spec.get("dtype"), spec.get("shape"), spec.get("offset")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise ExchangeError(f"array {index} has dtype {dtype!r:.100}, not one of {sorted(WIRE_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(size) is int and size >= 0 for size in shape)):
        raise ExchangeError(f"array {index} has shape {shape!r:.200}, not a list of at most {MAX_DIMS} sizes")
    if type(offset) is not int or offset % ALIGNMENT:
        raise ExchangeError(f"array {index} has offset {offset!r:.100}, not a multiple of {ALIGNMENT}")
    return np.dtype(dtype), tuple(shape), offset
