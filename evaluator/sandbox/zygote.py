"""The code that runs inside the zygote (`python -m evaluator.sandbox.zygote`): a process that imports torch once
and forks fresh workers from that state, so that a worker's start costs a fork and a CUDA context, not a
Python interpreter and a torch import (on an H100 host 0.8 s instead of 4.5 s).

The zygote never runs candidate code, never initialises a device and starts no thread of its own: every
worker is forked from the same clean state. It takes requests only from the evaluator, over a socket
nothing else holds (a worker closes its copy before anything else), and leaves when the evaluator closes
it or dies. It is not dumpable, so that no worker can read or trace it (see confinement.py).

A worker is forked twice (zygote -> intermediate -> worker) and the intermediate exits at once, so the
worker is orphaned to the evaluator, a child subreaper: its exit status is the evaluator's to collect,
exactly as for a spawned worker.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from evaluator.sandbox import proctree
from evaluator.sandbox.confinement import set_dumpable

MAX_REQUEST_BYTES = 1 << 20
# the descriptors a request carries, in order, and where the worker finds them
DESCRIPTORS = ("commands", "results", "exchange", "stdout", "stderr")
COMMANDS_FD, RESULTS_FD, EXCHANGE_FD = 3, 4, 5
_PLACES = {"commands": COMMANDS_FD, "results": RESULTS_FD, "exchange": EXCHANGE_FD, "stdout": 1, "stderr": 2}
# room the zygote's environment block reserves, so that a worker can write its own environment over it
ENVIRONMENT_ROOM_VARIABLE = "EPLB_SANDBOX_ENVIRONMENT_ROOM"
ENVIRONMENT_ROOM_BYTES = 64 * 1024
_REPARENT_WAIT_S = 10.0
_INTERMEDIATE_WAIT_S = 5.0  # for the intermediate process to fork and report; it takes milliseconds
_ABOVE_EVERY_PLACE = 64  # where received descriptors are moved before they are placed


def _reply(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _preload() -> None:
    """Import what every worker needs, without touching a device."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import evaluator.sandbox.server  # noqa: F401


def _place_descriptors(received: dict[str, int]) -> None:
    """Put the request's descriptors where the worker expects them, stdin on /dev/null, and close every other."""
    moved = {name: fcntl.fcntl(fd, fcntl.F_DUPFD, _ABOVE_EVERY_PLACE) for name, fd in received.items()}
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for name, fd in moved.items():
        os.dup2(fd, _PLACES[name])
    os.closerange(max(_PLACES.values()) + 1, os.sysconf("SC_OPEN_MAX"))


def _environment_block() -> tuple[int, int]:
    """The addresses of the environment block this process was started with (what /proc/<pid>/environ shows)."""
    fields = proctree.stat_fields(os.getpid())
    if fields is None:
        raise RuntimeError("/proc/self/stat cannot be read")
    return int(fields[50 - 3]), int(fields[51 - 3])  # env_start, env_end


def _take_environment(environment: dict[str, str]) -> None:
    """Make `environment` this process's own: in `os.environ` (and the C environment its children get) and written
    over the inherited block, so that /proc/<pid>/environ shows it too. The sandbox finds a worker's orphans by
    the marker there, as it does for a spawned worker."""
    os.environ.clear()  # first, so that nothing in the C environment points into the block any more
    os.environ.update(environment)
    entries = b"".join(f"{name}={value}".encode() + b"\0" for name, value in environment.items())
    start, end = _environment_block()
    if len(entries) > end - start:
        raise RuntimeError(f"the worker's environment ({len(entries)} bytes) does not fit the {end - start} bytes "
                           "of the zygote's environment block")
    ctypes.memmove(start, entries.ljust(end - start, b"\0"), end - start)


def _wait_until_orphaned_to(evaluator_pid: int, intermediate_pid: int) -> None:
    """Until the intermediate has exited and this process is the evaluator's child. Raises RuntimeError if it went to
    another (the evaluator is gone: nothing would ever stop this worker) or not in time."""
    deadline = time.monotonic() + _REPARENT_WAIT_S
    while (parent := os.getppid()) != evaluator_pid:
        if parent != intermediate_pid:
            raise RuntimeError(f"the evaluator (pid {evaluator_pid}) is gone")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker was not handed over to the evaluator (pid {evaluator_pid}) in time")
        time.sleep(0.0002)


def _become_worker(control: socket.socket, request: dict[str, Any], received: dict[str, int],
                   intermediate: int) -> NoReturn:
    """In the forked worker (`intermediate`, its parent until handed over): cut every tie to the zygote, then run the
    worker's main loop."""
    code: Any = 1
    try:
        control.close()  # before anything else: a candidate must never reach the zygote
        set_dumpable(True)  # the evaluator reads the worker's environment and memory use
        os.setsid()
        _place_descriptors(received)
        _take_environment(request["environment"])  # the marker first: from here on the evaluator can find it
        os.chdir(request["cwd"])
        _wait_until_orphaned_to(request["evaluator_pid"], intermediate)
        sys.path[0] = os.getcwd()  # as `python -m` sets it in a spawned worker
        from evaluator.sandbox import server

        code = server.main([*request["arguments"], "--commands", str(COMMANDS_FD), "--results", str(RESULTS_FD),
                            "--exchange", str(EXCHANGE_FD)])
    except SystemExit as error:
        code = error.code
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code if isinstance(code, int) else 1)


def _fork_worker(control: socket.socket, request: dict[str, Any], received: dict[str, int]) -> int:
    """Fork a worker through a short-lived intermediate; its pid, once it is the evaluator's child."""
    report_read, report_write = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(report_read)
            itself = os.getpid()
            worker = os.fork()
            if worker == 0:
                os.close(report_write)
                _become_worker(control, request, received, itself)
            os.write(report_write, str(worker).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    reported = b""
    try:
        waiting = select.poll()
        waiting.register(report_read, select.POLLIN | select.POLLHUP)
        deadline = time.monotonic() + _INTERMEDIATE_WAIT_S
        while (remaining := deadline - time.monotonic()) > 0 and waiting.poll(remaining * 1000):
            chunk = os.read(report_read, 64)
            if not chunk:
                break
            reported += chunk
        else:  # stopped (a candidate may send it SIGSTOP) or stuck: it must not hold the zygote up
            os.kill(intermediate, signal.SIGKILL)
            reported = b""
    finally:
        os.close(report_read)
        os.waitpid(intermediate, 0)  # once it is gone, the worker is orphaned to the evaluator
    if not reported:
        raise RuntimeError("the fork of a worker failed, or its intermediate process did not finish in time")
    return int(reported)


def _serve(control: socket.socket) -> int:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, len(DESCRIPTORS))
        except OSError:
            return 0
        if not message:
            return 0  # the evaluator closed its end, or died
        try:
            if len(fds) != len(DESCRIPTORS):
                raise ValueError(f"a request must carry {len(DESCRIPTORS)} descriptors, not {len(fds)}")
            request = json.loads(message)
            _reply(control, {"op": "forked", "pid": _fork_worker(control, request, dict(zip(DESCRIPTORS, fds)))})
        except Exception as error:
            _reply(control, {"op": "fail", "message": f"{type(error).__name__}: {error}"})
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator.sandbox.zygote")
    parser.add_argument("--control", type=int, required=True, help="the socket to take requests from")
    options = parser.parse_args(argv)
    control = socket.socket(fileno=options.control)
    set_dumpable(False)  # every worker is forked from this process: no candidate may read or trace it
    try:
        _preload()
    except BaseException:
        _reply(control, {"op": "fail", "message": f"the zygote could not import torch:\n{traceback.format_exc()}"})
        return 1
    _reply(control, {"op": "ready", "pid": os.getpid()})
    return _serve(control)


if __name__ == "__main__":
    sys.exit(main())
