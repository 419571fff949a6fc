"""The private channel between the evaluator and a worker: framed messages over a pipe pair.

A frame is a fixed prefix (magic, header length), then a JSON header. Nothing is pickled or evaluated, and no
array crosses here: a call's input and outputs cross in shared memory (exchange.py), which a frame only describes.
The candidate's prints go to stdout/stderr, never into these pipes.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any

MAGIC = b"EPLB"
_PREFIX = struct.Struct(">4sI")  # magic, header bytes
MAX_HEADER_BYTES = 1024 * 1024
MAX_OUTPUTS = 16  # values of one call's result; past that the worker sends none of them
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


def encode(header: dict[str, Any]) -> bytes:
    """One frame."""
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, len(header_bytes)) + header_bytes


def _parse_prefix(prefix: bytes) -> int:
    magic, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"frame starts with {prefix[:4]!r}, not {MAGIC!r}")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_len} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    return header_len


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


class FrameReader:
    """Reads frames from a pipe with a deadline; the evaluator side of the result channel."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read(self, deadline: float, alive: Callable[[], bool]) -> dict[str, Any]:
        """One whole message's header, read before `deadline` (time.monotonic()) while `alive()` holds."""
        header_len = _parse_prefix(bytes(self._read_exact(_PREFIX.size, deadline, alive)))
        return _parse_header(bytes(self._read_exact(header_len, deadline, alive)))

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

    def write(self, frame: bytes, deadline: float, alive: Callable[[], bool]) -> None:
        view = memoryview(frame)
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


def read_blocking(fd: int) -> dict[str, Any]:
    """One whole message's header, waiting as long as it takes; the worker side of the command channel."""
    header_len = _parse_prefix(bytes(_read_exact_blocking(fd, _PREFIX.size)))
    return _parse_header(bytes(_read_exact_blocking(fd, header_len)))


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


def write_blocking(fd: int, frame: bytes) -> None:
    """Write a whole frame; the worker side of the result channel."""
    view = memoryview(frame)
    while len(view):
        view = view[os.write(fd, view):]
