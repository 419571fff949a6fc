"""The evaluator's side of the zygote: start it, ask it for workers, and hold the workers it hands over.

One zygote serves every pool of a process (it is device-agnostic: each worker gets its own arguments and
environment). It is started on first use, started again if it died (a candidate, running as the same user, can
kill it), and killed at interpreter exit. A process forked from the evaluator starts its own.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

from evaluator.sandbox import zygote
from evaluator.sandbox.failures import Failure, FailureKind, SandboxFailure

_WAIT_STEP_S = (0.0005, 0.02)  # a waiting `ForkedProcess.wait` polls this often, first and at most
_KILL_WAIT_S = 5.0
_FORK_REPLY_S = 10.0  # a fork takes milliseconds: a zygote silent this long is stuck (stopped, say)


class ZygoteUnavailable(Exception):
    """The zygote could not be started, or stopped answering."""


class ForkedProcess:
    """A worker forked by the zygote and orphaned to this process (a child subreaper): what `subprocess.Popen`
    offers for a spawned worker, `pid`, `returncode`, `poll` and `wait`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The exit code (negative: the signal that ended it) once it has exited, else None."""
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # collected elsewhere, which nothing here does; as Popen takes it
                    self.returncode = 0
                else:
                    if pid == self.pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit; raises `subprocess.TimeoutExpired` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = _WAIT_STEP_S[0]
        while (returncode := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(step if deadline is None else max(0.0, min(step, deadline - time.monotonic())))
            step = min(step * 2, _WAIT_STEP_S[1])
        return returncode


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
             descriptors: Mapping[str, int], timeout_s: float) -> ForkedProcess:
        """A fresh worker running `python -m evaluator.sandbox.worker ARGUMENTS` in `cwd` with exactly
        `environment`, and the descriptors named in `zygote.DESCRIPTORS` (the caller closes its copies).
        Raises `SandboxFailure` (infra_error)."""
        deadline = time.monotonic() + timeout_s
        request = json.dumps({"arguments": list(arguments), "environment": dict(environment), "cwd": cwd,
                              "evaluator_pid": os.getpid()}).encode()
        fds = [descriptors[name] for name in zygote.DESCRIPTORS]
        with self._lock:
            try:
                return self._fork(request, fds, deadline)
            except ZygoteUnavailable:
                self._stop()  # it died (a candidate runs as the same user and may kill it): once more, afresh
            try:
                return self._fork(request, fds, deadline)
            except ZygoteUnavailable as error:
                self._stop()
                raise SandboxFailure(Failure(FailureKind.INFRA_ERROR, f"no worker could be forked: {error}")) from None

    def _fork(self, request: bytes, fds: list[int], deadline: float) -> ForkedProcess:
        """One request to a running zygote. Holds the lock."""
        control = self._running(deadline)
        try:
            socket.send_fds(control, [request], fds)
        except OSError as error:
            raise ZygoteUnavailable(f"the zygote's socket failed: {error}") from None
        reply = self._receive(control, min(deadline, time.monotonic() + _FORK_REPLY_S))
        if reply.get("op") != "forked" or not isinstance(reply.get("pid"), int):
            raise SandboxFailure(Failure(FailureKind.INFRA_ERROR,
                                         f"the zygote could not fork a worker: {reply.get('message', reply)}"))
        return ForkedProcess(reply["pid"])

    def close(self) -> None:
        """Kill the zygote; workers it forked live on, with their owners."""
        with self._lock:
            self._stop()

    def _running(self, deadline: float) -> socket.socket:
        """The control socket of a ready zygote, started if there is none. Holds the lock."""
        if self._control is not None and self._process is not None and self._process.poll() is None:
            return self._control
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = ours
        self._workdir = tempfile.mkdtemp(prefix="eplb-zygote-")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "evaluator.sandbox.zygote", "--control", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True, cwd=self._workdir,
                env={**self._environment,
                     zygote.ENVIRONMENT_ROOM_VARIABLE: "0" * zygote.ENVIRONMENT_ROOM_BYTES})
        except OSError as error:
            raise ZygoteUnavailable(f"could not start the zygote: {error}") from None
        finally:
            theirs.close()
        reply = self._receive(ours, deadline)
        if reply.get("op") != "ready":
            raise ZygoteUnavailable(str(reply.get("message", reply)))
        return ours

    def _receive(self, control: socket.socket, deadline: float) -> dict:
        """The zygote's next message, before `deadline`; raises `ZygoteUnavailable`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ZygoteUnavailable("the zygote did not answer in time")
        control.settimeout(remaining)
        try:
            message = control.recv(zygote.MAX_REQUEST_BYTES)
        except TimeoutError:
            raise ZygoteUnavailable("the zygote did not answer in time; the host may be overloaded") from None
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
        """Kill the zygote, if there is one, and release what it held. Holds the lock."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            self._process.kill()
            try:
                self._process.wait(_KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

_shared: ForkServer | None = None
_shared_lock = threading.Lock()


def shared(environment: Mapping[str, str]) -> ForkServer:
    """This process's fork server; `environment` is its zygote's own, if this call creates it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ForkServer(environment)
        return _shared


def _forget_in_child() -> None:
    """A forked child does not own its parent's zygote: it closes its copy of the socket and starts its own."""
    global _shared, _shared_lock
    if _shared is not None and _shared._control is not None:
        _shared._control.close()
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _close_shared() -> None:
    if _shared is not None:
        _shared.close()
