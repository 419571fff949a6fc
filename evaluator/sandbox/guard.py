"""The guard: a small process that kills every worker (and the zygote) of an evaluator process when that process
dies, however it dies.

A worker's own watch (server.py) and the zygote's socket see the evaluator go, but only while they run: a tree the
evaluator had stopped to time the yardstick, or a zygote a candidate stopped, would stay behind, stopped, for good.
The guard holds a pidfd of each process it is told of (sent over a socket, so that it names that process and no
later one with its number) and waits on the socket: when the evaluator is gone, the socket reads empty and the guard
sends SIGKILL, which stopped processes obey too, to the process group of each that still exists, then exits. Its
parent-death signal is SIGCONT: a guard stopped when the evaluator dies runs again and does its work.

This file runs as the guard (`python -I -S guard.py`, the standard library alone, so that it starts in milliseconds)
and holds the evaluator's side: `watch` a process, `close` the guard.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_MESSAGE_BYTES = 32
_RECHECK_S = 1.0  # how often processes that exited are checked for having been collected
_CLOSE_WAIT_S = 5.0  # for a guard told to end to kill what is left and exit; it takes milliseconds


class _Guard:
    """The evaluator's end of its guard, started on first use and again if it is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watched: set[int] = set()  # every pid sent, for a new guard to take over those that still exist
        self._folder: Path | None = None  # the guard's working folder

    def watch(self, pid: int) -> None:
        """Have the guard kill `pid`'s process group if this process dies while `pid` exists. `pid` is a child of
        this process, not yet collected, that leads its process group. Raises OSError if no guard can be started.
        Where the kernel has no pidfds (before Linux 5.3) there is no guard: a worker's own watch is all there is."""
        if not _HAS_PIDFDS:
            return
        with self._lock:
            self._watched.add(pid)
            if self._socket is not None and self._process is not None and self._process.poll() is None:
                try:
                    self._send(self._socket, pid)
                    return
                except OSError:
                    pass
            self._start()  # the first, or the guard is gone (a candidate may kill a process of its user)

    def _send(self, guard: socket.socket, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already, and collected by a thread that waited for it
            return
        try:
            socket.send_fds(guard, [str(pid).encode()], [pidfd])
        finally:
            os.close(pidfd)

    def _start(self) -> None:
        """A new guard, which takes over the processes sent to the last one that are still this process's
        children."""
        # here, not at the top: the guard itself runs on the standard library alone
        from evaluator.sandbox.proctree import children
        from evaluator.scratch import scratch_folder

        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._folder = scratch_folder("guard-")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__], stdin=theirs, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, cwd=self._folder)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        self._watched &= set(children(os.getpid()))
        for pid in self._watched:
            self._send(ours, pid)

    def close(self) -> None:
        """End the guard once nothing it watches should live on: it kills what still exists, and exits. The next
        worker's start starts another."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._process is not None:
                try:
                    self._process.wait(_CLOSE_WAIT_S)
                except subprocess.TimeoutExpired:  # stopped, say: it is killed below
                    pass
            self._stop()
            self._watched.clear()

    def _stop(self) -> None:
        """Kill the guard, then close its socket (a guard that read it closed would kill what it watches), and
        remove its folder."""
        from evaluator.files import remove_tree

        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._folder is not None:
            remove_tree(self._folder)
            self._folder = None

    def forget_in_child(self) -> None:
        """A forked child owns none of its parent's processes: it closes its copy of the socket (the guard acts when
        the last copy closes) and starts a guard of its own if it needs one."""
        if self._socket is not None:
            self._socket.close()
        self._socket, self._process, self._lock, self._watched, self._folder = None, None, threading.Lock(), set(), None


def _has_pidfds() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError):
        return False
    return True


_HAS_PIDFDS = _has_pidfds()
_guard = _Guard()
watch, close = _guard.watch, _guard.close
os.register_at_fork(after_in_child=_guard.forget_in_child)


def _serve(evaluator: socket.socket) -> None:
    """The guard's loop: take in the processes to watch until the evaluator's end closes, then kill them."""
    watched: dict[int, int] = {}  # pidfd -> pid, while the process exists (running, stopped or not yet collected)
    exited: set[int] = set()  # pidfds of processes that exited and may not have been collected yet
    poller = select.poll()
    poller.register(evaluator, select.POLLIN)
    while True:
        for fd, _ in poller.poll(_RECHECK_S * 1000 if exited else None):
            if fd != evaluator.fileno():  # the process exited: watched until it is collected, not polled
                poller.unregister(fd)
                exited.add(fd)
                continue
            message, fds, _, _ = socket.recv_fds(evaluator, _MESSAGE_BYTES, 1)
            if not message:
                _kill(watched)
                return
            for pidfd in fds[:1]:
                watched[pidfd] = int(message)
                poller.register(pidfd, select.POLLIN)
        for pidfd in [pidfd for pidfd in exited if not _exists(pidfd)]:
            exited.discard(pidfd)
            os.close(pidfd)
            del watched[pidfd]


def _kill(watched: dict[int, int]) -> None:
    """SIGKILL to the group of each process that still exists: while it does (a zombie too), its number names it and
    its group."""
    for pidfd, pid in watched.items():
        if _exists(pidfd):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:  # it has not made its group yet
                pass
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass


def _exists(pidfd: int) -> bool:
    """Whether the process is running, stopped, or exited and not yet collected."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except OSError:
        return False
    return True


def main() -> int:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGCONT, 0, 0, 0)
    _serve(socket.socket(fileno=0))  # its standard input: the evaluator's socket
    return 0


if __name__ == "__main__":
    sys.exit(main())
