"""Process trees on Linux: find every descendant of a worker, measure its memory, freeze and kill it.

The worker is a child subreaper, so while it lives, every process a candidate starts stays below
it, even after a double fork or a new session. The evaluator is a subreaper too, so when a worker
dies first its orphans come to the evaluator, where `ProcessTree` recognises them by the pids it
has seen and by the marker in their environment.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

_PR_SET_CHILD_SUBREAPER = 36
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_FREEZE_ROUNDS = 100
_STOP_WAIT_S = 0.5  # how long a round waits for SIGSTOP to take effect (a process in the kernel may lag)
_STOPPED_STATES = ("T", "t", "Z", "X")
_STRAY_POLL_S = 0.01
_WAIT_STEP_S = (0.0005, 0.02)  # a waiting `GroupLeader.wait` polls this often, first and at most


def become_subreaper() -> bool:
    """Make orphaned descendants of this process reparent to it rather than to init. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (empty if it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as file:
                found.extend(int(child) for child in file.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended
            return _children_without_proc_children(pid)  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


def _children_without_proc_children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def descendants(pid: int) -> list[int]:
    """Pids of every process below `pid`, breadth first."""
    found: list[int] = []
    seen = {pid}
    frontier = [pid]
    while frontier:
        next_frontier = []
        for parent in frontier:
            for child in children(parent):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    next_frontier.append(child)
        frontier = next_frontier
    return found


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat from field 3 (the state) on, so field n is at index n - 3; None if `pid` is
    gone. A zombie has them too."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses


def _stat(pid: int) -> tuple[str, int] | None:
    """State letter and resident bytes of `pid`."""
    fields = stat_fields(pid)
    return None if fields is None else (fields[0].decode(), int(fields[21]) * _PAGE_BYTES)


def proportional_bytes(pids: Iterable[int]) -> int:
    """Proportional set size of the processes together: shared pages counted once in all."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
                for line in file:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            stat = _stat(pid)
            total += stat[1] if stat else 0
    return total


def is_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (not by a tracer: a debugger's stops are no fault)."""
    stat = _stat(pid)
    return stat is not None and stat[0] == "T"


def _group(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None else int(fields[2])


def kill_group(group: int) -> None:
    """Send SIGKILL to every process of process group `group` (none if it has none)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass


class GroupLeader:
    """A child of this process that leads its own process group (a worker), waited for by pid, as
    `subprocess.Popen` is (`pid`, `returncode`, `poll`, `wait`). Its group is killed whenever it is collected,
    first, while its pid still names that group (a collected one's number may name another's later): whatever
    the group holds dies with it, a process that hides what marks it as the worker's included."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._popen = popen  # told the exit code, so that it never collects the pid itself
        self._lock = threading.Lock()

    def kill_group(self) -> None:
        """SIGKILL to every process of its group, unless it has been collected."""
        with self._lock:
            if self.returncode is None:
                kill_group(self.pid)

    def signal_group(self, number: int) -> None:
        """Send signal `number` to every process of its group, unless it has been collected."""
        with self._lock:
            if self.returncode is None:
                try:
                    os.killpg(self.pid, number)
                except OSError:
                    pass

    def poll(self) -> int | None:
        """The exit code (negative: the signal that ended it) once it has exited, else None."""
        with self._lock:
            if self.returncode is None:
                try:
                    exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:  # collected elsewhere, which nothing here does; as Popen takes it
                    self.returncode = 0
                else:
                    if exited is not None:
                        kill_group(self.pid)
                        self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
                if self._popen is not None:
                    self._popen.returncode = self.returncode
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


def reap_group_children(group: int, deadline: float) -> None:
    """After process group `group` was killed: collect those of its processes that are (or become) this
    process's children, until none of the group is left or `deadline` passes."""
    while _group_exists(group):  # first: a worker's group is mostly empty once the worker is collected
        for pid in children(os.getpid()):
            if _group(pid) == group:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if time.monotonic() >= deadline:
            return
        time.sleep(0.002)


def _group_exists(group: int) -> bool:
    """Whether process group `group` holds any process, zombies included."""
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    return True


def kill_strays_later(entry: bytes, watch_s: float) -> None:
    """For `watch_s` seconds, on a background thread, kill and collect every child of this process started with
    `entry` in its environment: a worker the zygote forked for a start that had already given up on it."""

    def watch() -> None:
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            for pid in children(os.getpid()):
                if has_environment_entry(pid, entry):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                    except OSError:
                        pass
            time.sleep(_STRAY_POLL_S)

    threading.Thread(target=watch, name="sandbox-stray-watch", daemon=True).start()


def has_environment_entry(pid: int, entry: bytes) -> bool:
    """Whether `entry` (b"NAME=value") is in the environment `pid` was started with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            # a search, not a split: a forked worker's block is tens of kilobytes, mostly NUL padding
            return b"\0" + entry + b"\0" in b"\0" + file.read() + b"\0"
    except OSError:
        return False


def wait_until_stopped(pids: list[int], deadline: float) -> None:
    """Wait until each of `pids` is stopped (or gone), or `deadline` (monotonic) has passed."""
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if (stat := _stat(pid)) is not None and stat[0] not in _STOPPED_STATES]
        if pending:
            time.sleep(0.0005)


@dataclass(frozen=True)
class TreeUsage:
    processes: int  # live processes, zombies excluded
    resident_bytes: int  # sum of resident set sizes (shared pages counted in each process)
    pids: tuple[int, ...]


class ProcessTree:
    """A worker process and everything it started, including orphans that reached the evaluator."""

    def __init__(self, root_pid: int, marker: bytes) -> None:
        self.root_pid = root_pid
        self._marker = marker
        self._seen: dict[int, psutil.Process] = {}
        try:
            self._root: psutil.Process | None = psutil.Process(root_pid)
            self._seen[root_pid] = self._root
        except psutil.Error:
            self._root = None

    def _root_running(self) -> bool:
        """Whether the root still holds its pid (a zombie does), so that its pid means it and no other."""
        try:
            return self._root is not None and self._root.is_running()
        except psutil.Error:
            return False

    def _remember(self, pids: Iterable[int]) -> None:
        for pid in pids:
            if pid not in self._seen:
                try:
                    self._seen[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass

    def _current(self, pid: int) -> psutil.Process | None:
        """The process that holds `pid` now, even if an earlier member held it before."""
        known = self._seen.get(pid)
        try:
            if known is None or not known.is_running():
                known = self._seen[pid] = psutil.Process(pid)
        except psutil.Error:
            return None
        return known

    def is_ours(self, pid: int) -> bool:
        """Whether `pid` is a process of this tree: one seen in it that still runs, or one started with its marker."""
        known = self._seen.get(pid)
        if known is not None:
            try:
                if known.is_running():
                    return True
            except psutil.Error:
                pass
        return has_environment_entry(pid, self._marker)

    def strays(self) -> list[int]:
        """Processes of this tree that were orphaned to the evaluator, and their descendants."""
        found = []
        for child in children(os.getpid()):
            if child != self.root_pid and self.is_ours(child):
                found.append(child)
                found.extend(descendants(child))
        return found

    def members(self, include_strays: bool) -> list[int]:
        pids = [self.root_pid, *descendants(self.root_pid)] if self._root_running() else []
        if include_strays:
            pids.extend(self.strays())
        self._remember(pids)
        return pids

    def usage(self) -> TreeUsage:
        """Live processes and resident memory of the tree; cheap enough to sample every few ms."""
        live = []
        resident = 0
        for pid in self.members(include_strays=False):
            stat = _stat(pid)
            if stat is not None and stat[0] not in ("Z", "X"):
                live.append(pid)
                resident += stat[1]
        return TreeUsage(len(live), resident, tuple(live))

    def kill(self) -> list[psutil.Process]:
        """Stop every member with SIGSTOP until no new one appears, then SIGKILL them all.

        A process that has really stopped cannot fork, and the stopped root keeps collecting
        orphans, so the set converges. Returns the processes signalled, for `reap`.
        """
        frozen: dict[int, psutil.Process] = {}
        for _ in range(_FREEZE_ROUNDS):
            fresh = [process for pid in self.members(include_strays=True)
                     if pid not in frozen and (process := self._current(pid)) is not None]
            if not fresh:
                break
            for process in fresh:
                frozen[process.pid] = process
                try:
                    process.suspend()
                except psutil.Error:
                    pass  # already gone
            # SIGSTOP lands asynchronously: until it has, a process may still fork after we listed its children
            wait_until_stopped([process.pid for process in fresh], time.monotonic() + _STOP_WAIT_S)
        for process in frozen.values():
            try:
                process.kill()
            except psutil.Error:
                pass
        return list(frozen.values())

    @staticmethod
    def reap(processes: Iterable[psutil.Process], deadline: float) -> list[int]:
        """Collect the exit status of killed processes that became the evaluator's children.

        Returns the pids still alive at `deadline` (none, unless one is stuck in the kernel).
        """
        pending = {process.pid: process for process in processes}
        while pending:
            for pid, process in list(pending.items()):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if done == pid:
                        del pending[pid]
                except ChildProcessError:
                    # not (yet) our child: its own parent reaps it, or it reparents to us once that parent is gone
                    try:
                        if not process.is_running():
                            del pending[pid]
                    except psutil.Error:
                        del pending[pid]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        return sorted(pending)
