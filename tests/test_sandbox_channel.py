"""The sandbox's plain parts, without worker processes: framing, bounded capture, limits."""

from __future__ import annotations

import json
import os
import struct
import threading
import time

import numpy as np
import pytest

from evaluator.sandbox import Limits, channel
from evaluator.sandbox.capture import OutputCapture

MAX_PAYLOAD = 1024 * 1024


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def frame(header: dict, payload: bytes = b"", header_len: int | None = None, magic: bytes = b"EPLB") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">4sIQ", magic, len(raw) if header_len is None else header_len, len(payload)) + raw + payload


def read_one(read_fd: int, timeout_s: float = 2.0, alive=lambda: True) -> channel.Message:
    return channel.FrameReader(read_fd, MAX_PAYLOAD).read(time.monotonic() + timeout_s, alive)


def test_round_trip_keeps_header_dtypes_shapes_and_values(pipe):
    read_fd, write_fd = pipe
    arrays = [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.array(2.5, dtype=np.float32),  # 0-d stays 0-d
        np.zeros((0, 5), dtype=np.int32),
        np.array([True, False, True]),
        np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not contiguous
    ]
    channel.write_blocking(write_fd, channel.encode({"op": "result", "n": 7}, arrays))
    message = read_one(read_fd)
    assert message.header == {"op": "result", "n": 7}
    assert len(message.arrays) == len(arrays)
    for sent, received in zip(arrays, message.arrays):
        assert received.dtype == sent.dtype
        assert received.shape == sent.shape
        np.testing.assert_array_equal(received, sent)


@pytest.mark.parametrize("writer", ["evaluator", "worker"])
def test_a_frame_larger_than_the_pipe_in_many_arrays_crosses_whole(pipe, writer):
    """The pipe takes a part of the frame at a time, while the reader drains it."""
    read_fd, write_fd = pipe
    rng = np.random.default_rng(5)
    arrays = [rng.integers(-9, 9, size=int(rng.integers(0, 4000))) for _ in range(150)]  # 2.4 MB or so
    chunks = channel.encode({"op": "result"}, arrays)
    if writer == "evaluator":
        write = threading.Thread(target=channel.FrameWriter(write_fd).write,
                                 args=(chunks, time.monotonic() + 10, lambda: True))
    else:
        write = threading.Thread(target=channel.write_blocking, args=(write_fd, chunks))
    write.start()
    message = channel.FrameReader(read_fd, 8 * MAX_PAYLOAD).read(time.monotonic() + 10, lambda: True)
    write.join()
    assert len(message.arrays) == len(arrays)
    for sent, received in zip(arrays, message.arrays):
        np.testing.assert_array_equal(received, sent)


def test_encode_refuses_dtypes_outside_the_whitelist():
    with pytest.raises(ValueError, match="object"):
        channel.encode({}, [np.array([object()], dtype=object)])


@pytest.mark.parametrize(
    "raw, expected",
    [
        (frame({"arrays": []}, magic=b"JUNK"), "not b'EPLB'"),
        (frame({"arrays": []}, header_len=channel.MAX_HEADER_BYTES + 1), "header of"),
        (struct.pack(">4sIQ", b"EPLB", 2, MAX_PAYLOAD + 1) + b"{}", "payload of"),
        (struct.pack(">4sIQ", b"EPLB", 4, 0) + b"\xff\xfe{}", "not JSON"),
        (struct.pack(">4sIQ", b"EPLB", 2000, 0) + b"[" * 1000 + b"]" * 1000, "not JSON|not a JSON object"),
        (frame([1, 2]), "not a JSON object"),
        (frame({"op": "result"}), "'arrays' list"),
        (frame({"arrays": [{"dtype": "object", "shape": [1]}]}, b"x" * 8), "dtype 'object'"),
        (frame({"arrays": [{"dtype": "int64", "shape": [-1]}]}), "shape"),
        (frame({"arrays": [{"dtype": "int64", "shape": [True]}]}, b"x" * 8), "shape"),
        (frame({"arrays": [{"dtype": "int64", "shape": [1] * 9}]}, b"x" * 8), "shape"),
        (frame({"arrays": [{"dtype": "int64", "shape": [2]}]}, b"x" * 8), "need 16 bytes but the payload holds 8"),
        (frame({"arrays": [{"dtype": "int64", "shape": [0, 2**62, 4]}]}), "even if empty"),
    ],
    ids=["magic", "huge-header", "huge-payload", "not-utf8", "deep-nesting", "not-object", "no-arrays",
         "bad-dtype", "negative-size", "bool-size", "too-many-dims", "size-mismatch", "empty-but-huge"],
)
def test_malformed_frames_are_protocol_errors(pipe, raw, expected):
    read_fd, write_fd = pipe
    os.write(write_fd, raw)
    with pytest.raises(channel.ProtocolError, match=expected):
        read_one(read_fd)


def test_a_partial_frame_times_out_instead_of_blocking(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, frame({"arrays": []})[:10])
    with pytest.raises(channel.ChannelTimeout, match="10 of 16 bytes"):
        read_one(read_fd, timeout_s=0.3)


def test_a_closed_writer_ends_the_read(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, frame({"arrays": []})[:20])
    os.close(write_fd)
    with pytest.raises(channel.ChannelClosed, match="closed after"):
        read_one(read_fd)


def test_a_dead_peer_ends_the_read_even_while_the_pipe_stays_open(pipe):
    read_fd, _ = pipe
    with pytest.raises(channel.ChannelClosed, match="peer is gone"):
        read_one(read_fd, timeout_s=10, alive=lambda: False)


def test_writing_to_a_peer_that_never_reads_times_out(pipe):
    _, write_fd = pipe
    writer = channel.FrameWriter(write_fd)
    chunks = channel.encode({"op": "call"}, [np.zeros(4 * 1024 * 1024, dtype=np.uint8)])
    with pytest.raises(channel.ChannelTimeout):
        writer.write(chunks, time.monotonic() + 0.3, lambda: True)


def test_writing_to_a_closed_reader_is_a_closed_channel(pipe):
    read_fd, write_fd = pipe
    os.close(read_fd)
    with pytest.raises(channel.ChannelClosed):
        channel.FrameWriter(write_fd).write(channel.encode({"op": "call"}), time.monotonic() + 1, lambda: True)


def test_capture_keeps_head_and_tail_and_counts_everything():
    read_fd, write_fd = os.pipe()
    capture = OutputCapture(os.fdopen(read_fd, "rb"), keep_bytes=1000, name="test")
    lines = b"".join(b"line %06d\n" % number for number in range(100_000))
    writer = threading.Thread(target=channel.write_blocking, args=(write_fd, [lines]))
    writer.start()
    writer.join()
    os.close(write_fd)
    capture.finish(5)
    captured = capture.snapshot()
    assert captured.total_bytes == len(lines)
    assert captured.head == lines[:500]
    assert captured.tail == lines[-500:]
    assert captured.truncated
    text = captured.text()
    assert text.startswith("line 000000\n") and text.endswith("line 099999\n")
    assert f"[... {len(lines) - 1000} bytes omitted ...]" in text
    assert captured.last_lines(100).startswith("line ")


def test_capture_of_a_short_stream_is_whole():
    read_fd, write_fd = os.pipe()
    capture = OutputCapture(os.fdopen(read_fd, "rb"), keep_bytes=1000, name="test")
    os.write(write_fd, b"hello\n")
    os.close(write_fd)
    capture.finish(5)
    assert capture.snapshot().text() == "hello\n"
    assert not capture.snapshot().truncated


def test_a_snapshot_includes_everything_written_before_it():
    read_fd, write_fd = os.pipe()
    capture = OutputCapture(os.fdopen(read_fd, "rb"), keep_bytes=1 << 20, name="test")
    for written in range(1, 301):
        os.write(write_fd, b"x")
        assert capture.snapshot().total_bytes == written
    os.close(write_fd)
    capture.finish(5)


@pytest.mark.parametrize("field", ["timeout_s", "memory_mb", "output_bytes", "max_processes"])
def test_limits_refuse_non_positive_values_and_name_the_field(field):
    with pytest.raises(ValueError, match=f"{field} must be positive, got 0"):
        Limits(**{field: 0})
