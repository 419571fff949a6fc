"""Programs timed without the harness: in a fresh process forked from this one (or from a `Forker` forked from it before
it touched the device), on the lane's cores, called in batches of fresh inputs with the device synchronised around
each batch, as the evaluator's protocol calls a candidate."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import torch

from evaluator.evaluation.timing import vary


def in_fresh_process(work: Callable[[], Any], what: str) -> Any:
    """Fork, and return what `work` returns in the child (JSON data). Fork before this process touches the device,
    which a forked child could then not use. Raises RuntimeError naming `what` if the child fails."""
    return _data(_forked(work), what)


class Forker:
    """A process forked from this one before it touches the device, which runs each piece of work asked of it in a
    fresh process of its own: such work can then take turns with what this process does on the device, where a
    process forked from this one later could not use the device. A context manager; thread-safe."""

    def __init__(self, work: Callable[[str], Any]) -> None:
        """`work(key)` is what a request for `key` runs in the fresh process; its JSON data is the reply."""
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # the forker: nothing of it returns
            os.close(requests_write)
            os.close(replies_read)
            _serve(work, requests_read, replies_write)
        os.close(requests_read)
        os.close(replies_write)
        self._requests, self._replies = os.fdopen(requests_write, "wb"), os.fdopen(replies_read, "rb")
        self._lock = threading.Lock()

    def run(self, key: str, what: str) -> Any:
        """What `work(key)` returns in a fresh process. Raises RuntimeError naming `what` if it fails."""
        with self._lock:
            try:
                self._requests.write(json.dumps(key).encode() + b"\n")
                self._requests.flush()
                reply = self._replies.readline()
            except OSError:  # the forker is gone: its end of the pipe closed
                reply = b""
        return _data(json.loads(reply or b'{"error": "the forker exited"}'), what)

    def close(self) -> None:
        """End the forker (it exits once its requests close) and collect it."""
        self._requests.close()
        self._replies.close()
        os.waitpid(self._pid, 0)

    def __enter__(self) -> Forker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serve(work: Callable[[str], Any], requests: int, replies: int) -> NoReturn:
    """The forker's loop: a fresh process for each request, until the requests close; then exit."""
    try:
        with os.fdopen(requests, "rb") as incoming, os.fdopen(replies, "wb") as outgoing:
            for line in incoming:
                key = json.loads(line)
                outgoing.write(json.dumps(_forked(lambda: work(key))).encode() + b"\n")
                outgoing.flush()
    finally:
        os._exit(0)


def _forked(work: Callable[[], Any]) -> dict[str, Any]:
    """Fork; the child's reply: {"data": what `work` returned} or {"error": why it failed}."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of it returns, whatever it raises
        try:
            os.close(read)
            try:
                text = json.dumps({"data": work()})
            except BaseException as error:  # data JSON cannot hold too
                text = json.dumps({"error": f"{type(error).__name__}: {error}"})
            with os.fdopen(write, "wb") as pipe:
                pipe.write(text.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reply = json.loads(pipe.read() or b'{"error": "the process wrote nothing"}')
    os.waitpid(pid, 0)
    return reply


def _data(reply: dict[str, Any], what: str) -> Any:
    if "error" in reply:
        raise RuntimeError(f"{what} failed: {reply['error']}")
    return reply["data"]


def on_cores(cpus: Sequence[int] | None) -> None:
    """Keep this process on `cpus` (if any) with as many threads."""
    if cpus:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))


def device_named(device: str) -> str:
    """The device `device` names here: `auto` is CUDA where there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load(source: str, name: str) -> Callable[..., Any]:
    """The `rebalance_experts` of a program's `source`, run in this process."""
    namespace: dict[str, object] = {"__name__": f"bench_{name}"}
    exec(compile(source, name, "exec"), namespace)
    return namespace["rebalance_experts"]  # type: ignore[return-value]


class InProcess:
    """A program's calls on fresh variants of `inputs` on `device`, synchronised around each batch."""

    def __init__(self, function: Callable[..., Any], device: str, inputs: np.ndarray, args: tuple[int, ...]) -> None:
        self.function, self.device, self.inputs, self.args = function, device, inputs, args
        self.synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self._rng = np.random.default_rng()

    def warm_up(self, seconds: float, calls: int) -> None:
        """At least `calls` calls, and at least `seconds`."""
        ended = time.perf_counter() + seconds
        done = 0
        while done < calls or time.perf_counter() < ended:
            self.function(self._fresh(), *self.args)
            done += 1

    def batch_size(self, batch_ms: float, most: int) -> int:
        """How many calls make a batch of at least `batch_ms` (at most `most`), by one call timed alone."""
        return max(1, min(most, math.ceil(batch_ms / self.batch_ms_per_call(1))))

    def batch_ms_per_call(self, size: int) -> float:
        """One batch of `size` calls, its inputs made before it: its time per call in ms."""
        batch = [self._fresh() for _ in range(size)]
        self.synchronize()
        started = time.perf_counter()
        for weight in batch:
            self.function(weight, *self.args)
        self.synchronize()
        return (time.perf_counter() - started) * 1e3 / size

    def _fresh(self) -> torch.Tensor:
        window = self.inputs[int(self._rng.integers(len(self.inputs) - 1))]
        return torch.from_numpy(vary(window, self._rng)).to(self.device)
