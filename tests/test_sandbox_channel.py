"""The sandbox's plain parts, without worker processes: framing, the exchange, bounded capture, limits."""

from __future__ import annotations

import json
import os
import struct
import threading
import time

import numpy as np
import pytest

from evaluator.sandbox import Limits, channel, exchange
from evaluator.sandbox.capture import OutputCapture

@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def frame(header: object, header_len: int | None = None, magic: bytes = b"EPLB") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">4sI", magic, len(raw) if header_len is None else header_len) + raw


def read_one(read_fd: int, timeout_s: float = 2.0, alive=lambda: True) -> dict:
    return channel.FrameReader(read_fd).read(time.monotonic() + timeout_s, alive)


def test_round_trip_keeps_the_header(pipe):
    read_fd, write_fd = pipe
    header = {"op": "result", "n": 7, "outputs": [{"dtype": "int64", "shape": [3, 4], "offset": 64}], "text": "é"}
    channel.write_blocking(write_fd, channel.encode(header))
    assert read_one(read_fd) == header


@pytest.mark.parametrize("writer", ["evaluator", "worker"])
def test_a_frame_larger_than_the_pipe_crosses_whole(pipe, writer):
    """The pipe takes a part of the frame at a time, while the reader drains it (a long traceback does this)."""
    read_fd, write_fd = pipe
    header = {"op": "fail", "message": "line of a traceback\n" * 40_000}  # 800 kB, a pipe holds 64 kB
    encoded = channel.encode(header)
    if writer == "evaluator":
        write = threading.Thread(target=channel.FrameWriter(write_fd).write,
                                 args=(encoded, time.monotonic() + 10, lambda: True))
    else:
        write = threading.Thread(target=channel.write_blocking, args=(write_fd, encoded))
    write.start()
    received = read_one(read_fd, timeout_s=10)
    write.join()
    assert received == header


@pytest.mark.parametrize(
    "raw, expected",
    [
        (frame({}, magic=b"JUNK"), "not b'EPLB'"),
        (frame({}, header_len=channel.MAX_HEADER_BYTES + 1), "header of"),
        (struct.pack(">4sI", b"EPLB", 4) + b"\xff\xfe{}", "not JSON"),
        (struct.pack(">4sI", b"EPLB", 2000) + b"[" * 1000 + b"]" * 1000, "not JSON|not a JSON object"),
        (frame([1, 2]), "not a JSON object"),
    ],
    ids=["magic", "huge-header", "not-utf8", "deep-nesting", "not-object"],
)
def test_malformed_frames_are_protocol_errors(pipe, raw, expected):
    read_fd, write_fd = pipe
    os.write(write_fd, raw)
    with pytest.raises(channel.ProtocolError, match=expected):
        read_one(read_fd)


def test_a_partial_frame_times_out_instead_of_blocking(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, frame({})[:5])
    with pytest.raises(channel.ChannelTimeout, match="5 of 8 bytes"):
        read_one(read_fd, timeout_s=0.3)


def test_a_closed_writer_ends_the_read(pipe):
    read_fd, write_fd = pipe
    os.write(write_fd, frame({"op": "result", "outputs": []})[:20])
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
    with pytest.raises(channel.ChannelTimeout):
        writer.write(channel.encode({"op": "call", "padding": "x" * (1 << 20)}), time.monotonic() + 0.3,
                     lambda: True)


def test_writing_to_a_closed_reader_is_a_closed_channel(pipe):
    read_fd, write_fd = pipe
    os.close(read_fd)
    with pytest.raises(channel.ChannelClosed):
        channel.FrameWriter(write_fd).write(channel.encode({"op": "call"}), time.monotonic() + 1, lambda: True)


@pytest.fixture
def shared():
    fd = exchange.create(1 << 20)
    region = exchange.Exchange(fd)
    yield fd, region
    region.close()
    os.close(fd)


def place(fd: int, arrays: list[np.ndarray], start: int) -> list[dict]:
    """What a worker does: each array's bytes at an aligned offset from `start`, in order; their descriptions."""
    described = []
    offset = start
    for array in arrays:
        os.pwrite(fd, np.ascontiguousarray(array).tobytes(), offset)
        described.append({"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset})
        offset = exchange.aligned(offset + exchange.counted_bytes(array.shape, array.itemsize))
    return described


def test_outputs_cross_the_exchange_with_their_dtypes_shapes_and_values(shared):
    fd, region = shared
    arrays = [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.array(2.5, dtype=np.float32),  # 0-d stays 0-d
        np.zeros((0, 5), dtype=np.int32),
        np.array([True, False, True]),
        np.arange(6, dtype=np.float64).reshape(2, 3).T,
    ]
    start = exchange.aligned(5)
    received = region.read_outputs(place(fd, arrays, start), start)
    assert len(received) == len(arrays)
    for sent, got in zip(arrays, received):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    os.pwrite(fd, bytes(256), start)  # what the worker's process writes later is not in the copies
    np.testing.assert_array_equal(received[0], arrays[0])


def test_a_batchs_inputs_land_from_the_start_each_aligned_and_described(shared):
    fd, region = shared
    weight = np.arange(2 * 7, dtype=np.int64).reshape(7, 2).T  # not contiguous
    other = np.arange(3, dtype=np.float32)
    described, outputs_start = region.write_inputs([weight, other])
    assert described == [{"dtype": "int64", "shape": [2, 7], "offset": 0},
                         {"dtype": "float32", "shape": [3], "offset": exchange.ALIGNMENT * 2}]
    assert outputs_start == exchange.ALIGNMENT * 3  # 112 bytes, then 12
    np.testing.assert_array_equal(np.frombuffer(os.pread(fd, weight.nbytes, 0), np.int64).reshape(2, 7), weight)
    np.testing.assert_array_equal(np.frombuffer(os.pread(fd, 12, exchange.ALIGNMENT * 2), np.float32), other)
    with pytest.raises(ValueError, match="do not fit"):
        region.write_inputs([weight, np.zeros(region.size, dtype=np.uint8)])


def test_the_exchange_cannot_be_shrunk_or_grown(shared):
    """A read past the end of a shrunk region would kill the evaluator with SIGBUS."""
    fd, _ = shared
    for size in (0, 2 << 20):
        with pytest.raises(PermissionError):
            os.ftruncate(fd, size)


START = 128


@pytest.mark.parametrize("described, expected", [
    ([{"dtype": "int64", "shape": [4], "offset": 0}], "outside 128 to"),  # in the input's part
    ([{"dtype": "int64", "shape": [1 << 20], "offset": START}], "outside 128 to"),  # past the end
    ([{"dtype": "int64", "shape": [0, 2**62, 4], "offset": START}], "outside 128 to"),  # empty but huge
    ([{"dtype": "int64", "shape": [16], "offset": START}, {"dtype": "int64", "shape": [16], "offset": START}],
     "after the arrays before it"),  # one range twice: a forged header could make the evaluator copy it 16 times
    ([{"dtype": "int64", "shape": [4], "offset": START + 8}], "not a multiple of 64"),
    ([{"dtype": "int64", "shape": [4], "offset": True}], "offset True"),
    ([{"dtype": "object", "shape": [1], "offset": START}], "dtype 'object'"),
    ([{"dtype": "int64", "shape": [-1], "offset": START}], "shape"),
    ([{"dtype": "int64", "shape": [True], "offset": START}], "shape"),
    ([{"dtype": "int64", "shape": [1] * 9, "offset": START}], "shape"),
    (["int64"], "described by"),
], ids=["input-part", "past-the-end", "empty-but-huge", "overlapping", "unaligned", "bool-offset", "bad-dtype",
        "negative-size", "bool-size", "too-many-dims", "not-an-object"])
def test_outputs_described_outside_their_part_of_the_exchange_are_refused(shared, described, expected):
    _, region = shared
    with pytest.raises(exchange.ExchangeError, match=expected):
        region.read_outputs(described, START)


def test_capture_keeps_head_and_tail_and_counts_everything():
    read_fd, write_fd = os.pipe()
    capture = OutputCapture(os.fdopen(read_fd, "rb"), keep_bytes=1000, name="test")
    lines = b"".join(b"line %06d\n" % number for number in range(100_000))
    writer = threading.Thread(target=channel.write_blocking, args=(write_fd, lines))
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
