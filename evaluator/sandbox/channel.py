"""The private channel between the evaluator and a worker: framed messages over a pipe pair.

A frame is a fixed prefix (magic, header length, payload length), a JSON header, then the raw
bytes of the arrays the header lists (dtype from a whitelist, shape). Nothing is pickled or
evaluated: the evaluator decodes JSON and copies bytes into numpy arrays whose size it checked
before allocating. The candidate's prints go to stdout/stderr, never into these pipes.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"EPLB"
_PREFIX = struct.Struct(">4sIQ")  # magic, header bytes, payload bytes
MAX_HEADER_BYTES = 1024 * 1024
MAX_DIMS = 8
MAX_OUTPUTS = 16  # values of one call's result; past that the worker sends none of them
# numpy dtype names that may cross; each has the same name as its torch dtype
WIRE_DTYPES = frozenset(
    {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
)
# exit codes of a worker that ends by itself
EXIT_CHANNEL_LOST = 3  # the channel broke: the candidate closed, read or wrote our descriptors
EXIT_ORPHANED = 4  # the evaluator died; the worker killed its tree and left
_POLL_SLICE_S = 0.05  # how often a waiting reader checks that its peer still lives
_CHUNK = 1024 * 1024


class ChannelError(Exception):
    """The channel cannot deliver a message."""


class ChannelClosed(ChannelError):
    """The peer closed its end (or died) before a whole message arrived."""


class ChannelTimeout(ChannelError):
    """No whole message arrived before the deadline."""


class ProtocolError(ChannelError):
    """Bytes arrived that are not a well-formed message."""


@dataclass(frozen=True)
class Message:
    header: dict[str, Any]
    arrays: tuple[np.ndarray, ...] = ()


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """The chunks of one frame; `header` must not use the key "arrays"."""
    # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
    contiguous = [array if array.flags.c_contiguous else array.copy(order="C") for array in arrays]
    for array in contiguous:
        if array.dtype.name not in WIRE_DTYPES:
            raise ValueError(f"dtype {array.dtype.name} cannot cross the channel")
    specs = [{"dtype": array.dtype.name, "shape": list(array.shape)} for array in contiguous]
    header_bytes = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode()
    payload = [memoryview(array.reshape(-1).view(np.uint8)) for array in contiguous]
    prefix = _PREFIX.pack(MAGIC, len(header_bytes), sum(len(chunk) for chunk in payload))
    return [prefix + header_bytes, *payload]


def counted_bytes(shape: Sequence[int], itemsize: int) -> int:
    """The bytes an array of `shape` counts for against a bound: its size with every empty dimension taken as 1,
    so that no shape passes by being empty (numpy refuses some of those, e.g. [0, 2**62, 4])."""
    return math.prod(max(size, 1) for size in shape) * itemsize


def _parse_prefix(prefix: bytes, max_payload: int) -> tuple[int, int]:
    magic, header_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"frame starts with {prefix[:4]!r}, not {MAGIC!r}")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_len} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    if payload_len > max_payload:
        raise ProtocolError(f"payload of {payload_len} bytes is over the {max_payload}-byte limit")
    return header_len, payload_len


def _parse_header(raw: bytes, payload_len: int,
                  max_payload: int) -> tuple[dict[str, Any], list[tuple[np.dtype, tuple[int, ...]]]]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise ProtocolError("header is not a JSON object with an 'arrays' list")
    specs = []
    total = 0
    for index, spec in enumerate(header.pop("arrays")):
        shape = spec.get("shape") if isinstance(spec, dict) else None
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        if dtype not in WIRE_DTYPES:
            raise ProtocolError(f"array {index} has dtype {dtype!r}, not one of {sorted(WIRE_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(type(size) is int and size >= 0 for size in shape)):
            raise ProtocolError(f"array {index} has shape {shape!r}, not a list of at most {MAX_DIMS} sizes")
        if counted_bytes(shape, np.dtype(dtype).itemsize) > max(max_payload, 1):
            raise ProtocolError(f"array {index} has shape {shape!r}, larger than a message can be even if empty")
        specs.append((np.dtype(dtype), tuple(shape)))
        total += math.prod(shape) * np.dtype(dtype).itemsize
    if total != payload_len:
        raise ProtocolError(f"arrays need {total} bytes but the payload holds {payload_len}")
    return header, specs


def _split_payload(payload: bytearray, specs: list[tuple[np.dtype, tuple[int, ...]]]) -> tuple[np.ndarray, ...]:
    arrays = []
    offset = 0
    for dtype, shape in specs:
        count = math.prod(shape)
        arrays.append(np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += count * dtype.itemsize
    return tuple(arrays)


class FrameReader:
    """Reads frames from a pipe with a deadline; the evaluator side of the result channel."""

    def __init__(self, fd: int, max_payload: int) -> None:
        self._fd = fd
        self._max_payload = max_payload
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read(self, deadline: float, alive: Callable[[], bool]) -> Message:
        """One whole message, read before `deadline` (time.monotonic()) while `alive()` holds."""
        header_len, payload_len = _parse_prefix(bytes(self._read_exact(_PREFIX.size, deadline, alive)),
                                                self._max_payload)
        header, specs = _parse_header(bytes(self._read_exact(header_len, deadline, alive)), payload_len,
                                      self._max_payload)
        payload = self._read_exact(payload_len, deadline, alive)
        return Message(header, _split_payload(payload, specs))

    def _read_exact(self, size: int, deadline: float, alive: Callable[[], bool]) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelTimeout(f"{got} of {size} bytes arrived in time")
            if self._poll.poll(min(remaining, _POLL_SLICE_S) * 1000):
                count = os.readv(self._fd, [view[got:got + _CHUNK]])
                if count == 0:
                    raise ChannelClosed(f"the pipe closed after {got} of {size} bytes")
                got += count
            elif not alive():
                raise ChannelClosed(f"the peer is gone after {got} of {size} bytes")
        return buffer


class FrameWriter:
    """Writes frames to a pipe with a deadline, never blocking past it; the evaluator side of the command channel."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT | select.POLLERR)

    def write(self, chunks: Sequence[bytes | memoryview], deadline: float, alive: Callable[[], bool]) -> None:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while len(view):
                try:
                    view = view[os.write(self._fd, view[:_CHUNK]):]
                    continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, OSError) as error:
                    raise ChannelClosed(f"the peer stopped reading: {error}") from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelTimeout("the peer did not read the message in time")
                if not self._poll.poll(min(remaining, _POLL_SLICE_S) * 1000) and not alive():
                    raise ChannelClosed("the peer is gone")


def read_blocking(fd: int, max_payload: int) -> Message:
    """One whole message, waiting as long as it takes; the worker side of the command channel."""
    header_len, payload_len = _parse_prefix(bytes(_read_exact_blocking(fd, _PREFIX.size)), max_payload)
    header, specs = _parse_header(bytes(_read_exact_blocking(fd, header_len)), payload_len, max_payload)
    return Message(header, _split_payload(_read_exact_blocking(fd, payload_len), specs))


def _read_exact_blocking(fd: int, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = os.readv(fd, [view[got:got + _CHUNK]])
        if count == 0:
            raise ChannelClosed(f"the pipe closed after {got} of {size} bytes")
        got += count
    return buffer


def write_blocking(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    """Write a whole frame; the worker side of the result channel."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while len(view):
            view = view[os.write(fd, view):]
