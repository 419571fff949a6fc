"""The evaluator's side of the zygote: start it, ask it for workers, and hold the workers it hands over.

One zygote serves every pool of a process whose workers' environments differ only in the device they see
(each worker gets its own arguments and environment). It is started on first use, started again if it died
or was stopped (a candidate runs as the same user and can do either), and killed at interpreter exit. A
process forked from the evaluator starts its own.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from evaluator.files import remove_tree
from evaluator.sandbox import guard, proctree, zygote
from evaluator.scratch import scratch_folder

_KILL_WAIT_S = 5.0
_FORK_REPLY_S = 10.0  # a fork takes milliseconds: a zygote silent this long is stuck
_ZYGOTE_START_S = 120.0  # importing torch; seconds, minutes only on a host far overloaded
_STOPPED_CHECK_S = 0.2  # how often a wait for the zygote checks that it has not been stopped


class ZygoteUnavailable(Exception):
    """No worker came from the zygote. `sent`: the request had been sent, so a worker may have been forked all
    the same, holding the descriptors it was sent."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class ForkServer:
    """A zygote process, started on first use with `environment` as its own; `fork` asks it for one worker.
    Thread-safe."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = dict(environment)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._workdir: str | None = None

    def fork(self, arguments: Sequence[str], environment: Mapping[str, str], cwd: str,
             descriptors: Mapping[str, int], timeout_s: float) -> proctree.GroupLeader:
        """A fresh worker running the worker's main loop (`server.main(ARGUMENTS)`) in `cwd` with exactly
        `environment`, and the descriptors named in `zygote.DESCRIPTORS` (the caller closes its copies).

        Raises `ZygoteUnavailable` when no worker came back: its `sent` says whether the request had been sent.
        If it had, a worker may have been forked all the same: the caller closes those descriptors, so that it
        finds its channel closed and leaves, and uses others.
        """
        deadline = time.monotonic() + timeout_s
        request = json.dumps({"arguments": list(arguments), "environment": dict(environment), "cwd": cwd,
                              "evaluator_pid": os.getpid()}).encode()
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ZygoteUnavailable("the zygote was busy for the whole time the start had")
        try:
            control = self._running(deadline)
            try:
                socket.send_fds(control, [request], [descriptors[name] for name in zygote.DESCRIPTORS])
            except OSError as error:
                self._stop()
                raise ZygoteUnavailable(f"the zygote's socket failed: {error}") from None
            try:
                reply = self._receive(control, min(deadline, time.monotonic() + _FORK_REPLY_S))
            except ZygoteUnavailable as error:
                self._stop()
                raise ZygoteUnavailable(str(error), sent=True) from None
        finally:
            self._lock.release()
        if reply.get("op") != "forked" or not isinstance(reply.get("pid"), int):
            raise ZygoteUnavailable(f"the zygote could not fork a worker: {reply.get('message', reply)}", sent=True)
        return proctree.GroupLeader(reply["pid"])

    def close(self) -> None:
        """Kill the zygote; workers it forked live on, with their owners."""
        with self._lock:
            self._stop()

    def _running(self, deadline: float) -> socket.socket:
        """The control socket of a ready zygote, started if there is none (or it died, or was stopped). Holds the
        lock. Raises `ZygoteUnavailable`."""
        if (self._control is not None and self._process is not None and self._process.poll() is None
                and not proctree.is_stopped(self._process.pid)):
            return self._control
        self._stop()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._control = ours
            self._workdir = str(scratch_folder("zygote-"))
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "evaluator.sandbox.zygote", "--control", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),), start_new_session=True, cwd=self._workdir,
                    env={**self._environment,
                         zygote.ENVIRONMENT_ROOM_VARIABLE: "0" * zygote.ENVIRONMENT_ROOM_BYTES})
            finally:
                theirs.close()
            guard.watch(self._process.pid)
        except OSError as error:
            self._stop()
            raise ZygoteUnavailable(f"could not start the zygote: {error}") from None
        try:
            reply = self._receive(ours, min(deadline, time.monotonic() + _ZYGOTE_START_S))
        except ZygoteUnavailable:
            self._stop()
            raise
        if reply.get("op") != "ready":
            self._stop()
            raise ZygoteUnavailable(str(reply.get("message", reply)))
        return ours

    def _receive(self, control: socket.socket, deadline: float) -> dict:
        """The zygote's next message, before `deadline`; raises `ZygoteUnavailable` at once if the zygote is
        stopped (a candidate runs as the same user and may send it SIGSTOP)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ZygoteUnavailable("the zygote did not answer in time; the host may be overloaded")
            if self._process is not None and proctree.is_stopped(self._process.pid):
                raise ZygoteUnavailable("the zygote was stopped")
            control.settimeout(min(remaining, _STOPPED_CHECK_S))
            try:
                message = control.recv(zygote.MAX_REQUEST_BYTES)
                break
            except TimeoutError:
                continue
            except OSError as error:
                raise ZygoteUnavailable(f"the zygote's socket failed: {error}") from None
        if not message:
            raise ZygoteUnavailable("the zygote exited")
        try:
            reply = json.loads(message)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ZygoteUnavailable(f"the zygote sent {message[:200]!r}")
        return reply

    def _stop(self) -> None:
        """Kill the zygote and every intermediate it forked (its process group: a stopped one included), collect
        those that came to this process, and release what it held. Holds the lock."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            group = self._process.pid
            proctree.kill_group(group)
            try:
                self._process.wait(_KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            proctree.reap_group_children(group, time.monotonic() + _KILL_WAIT_S)
            self._process = None
        if self._workdir is not None:
            remove_tree(self._workdir)
            self._workdir = None


# Variables read when a device is initialised, which a worker does after the fork: they may differ from the
# zygote's. Any other difference (a thread count, a library path read at import) needs a zygote of its own.
_READ_AT_DEVICE_INIT = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
_servers: dict[tuple[tuple[str, str], ...], ForkServer] = {}
_servers_lock = threading.Lock()


def for_environment(environment: Mapping[str, str], ignored: Sequence[str]) -> ForkServer:
    """This process's fork server for workers of `environment` (less the variables named in `ignored`, which
    each worker sets for itself): one zygote per distinct environment, started on first use."""
    own = {name: value for name, value in environment.items()
           if name not in ignored and name not in _READ_AT_DEVICE_INIT}
    key = tuple(sorted(own.items()))
    with _servers_lock:
        if key not in _servers:
            _servers[key] = ForkServer(own)
        return _servers[key]


def _forget_in_child() -> None:
    """A forked child does not own its parent's zygotes: it closes its copies of their sockets and starts its own."""
    global _servers_lock
    for server in _servers.values():
        if server._control is not None:
            server._control.close()
    _servers.clear()
    _servers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def close_all() -> None:
    """Stop this process's zygotes (each is started again on its next use)."""
    for server in list(_servers.values()):
        server.close()
