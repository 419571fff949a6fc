"""The devices candidates are timed on: one lane per GPU (or one for the CPU), each timing one candidate at a time.

A lane owns its spare workers (warmed up, when given a `WarmUp`), a lock and, where the machine has cores enough, a
physical core: every process of a candidate runs on one CPU of it, its sibling hardware threads left idle, while the
evaluator's own threads, its validations and the spares starting run on the other cores (`isolated`). A busy sibling
slows a core's other thread by half or more, and a candidate timed beside the evaluator's work would be timed at the
evaluator's pace. With too few cores, candidates run where the evaluator does, and no spare starts while one is
timed. The lock is held from a candidate's
launch until its last process has exited, in this process (a thread lock) and across processes, so that
evaluators in several processes on one machine, as loops that evaluate in process pools run them, never time
two candidates on one device at once. Within a process, a lane whose holder's processes were killed but have not
exited yet (a CUDA context's teardown takes about 0.1 s) may go to the next candidate at once. On an isolated lane
their exits run on the evaluator's cores (each worker is moved there before it is killed) and nothing waits for them;
otherwise the next candidate launches and warms up meanwhile, and `Lanes.settle` waits for the exits before anything
on the lane is timed.

The lock across processes is a listening Unix socket bound to an abstract address (Linux): the kernel lets
one socket hold an address at a time and frees it when its holder closes it or dies. Unlike a lock file,
nothing of it lies where a candidate could remove or replace it, and no crash leaves it behind. A process
waiting for the lane connects to the holder and sleeps until the holder's socket closes; a holder that
releases a lane others wait for lets them take it before it takes it again. Processes take turns when they name
the GPU alike (`CUDA_VISIBLE_DEVICES`) and share a network namespace (abstract addresses belong to one), whatever
their cache folders: two candidates timed on one device at once would each be timed at the other's expense.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from evaluator.sandbox import Failure, Limits, SandboxFailure, WarmUp, WorkerPool
from evaluator.status import Status
from evaluator.sandbox.cards import cpu_model
from evaluator.sandbox.cpus import physical_cores, pin_threads, usable_cpus

# The lock sockets open in this process. A forked child closes its copies, so that a lane is free once this
# process lets it go, whatever the child does; a fork waits while a lock is being opened or closed.
_held_locks: set[socket.socket] = set()
_held_locks_guard = threading.Lock()
_BACKLOG = 128  # processes that may wait on one lane at once
_RETRY_S = 0.005  # before looking again at an address bound by a socket that does not listen (yet)
# After releasing a lane that other processes wait for, this process lets them have it first for so long.
_COURTESY_S = 0.05
_HELD_ELSEWHERE = object()  # a lane free in this process whose lock another process holds
MACHINE_SCOPE = "machine"  # the lock scope every evaluator shares unless given another
# The evaluator keeps at least this many cores of its own beside the lanes', or the lanes get none: on a machine of
# two CPUs (seen: one busy slowed the other by 40%, however the kernel showed them), the candidate gets them all and
# the evaluator waits while it is timed.
MIN_EVALUATOR_CORES = 3


@dataclass(frozen=True)
class Lane:
    """One device: its name ("cuda:0", "cpu"), its spare workers, the abstract address that locks it, the CPUs its
    candidates run on (None: wherever the evaluator runs), and the device and card its workers report."""

    name: str
    pool: WorkerPool
    lock_address: str
    cpus: tuple[int, ...] | None = None
    device: str = "cpu"
    card: str = ""

    @property
    def isolated(self) -> bool:
        """Whether its candidates have a core of their own."""
        return self.cpus is not None


_GiveBack = Callable[[Lane, "socket.socket | None", bool, "Callable[[], object] | None"], None]


class Holding:
    """A lane lent by `Lanes.take`; `release` gives it back, once, from any thread."""

    def __init__(self, lane: Lane, lock: socket.socket, give_back: _GiveBack) -> None:
        self.lane = lane
        self._lock = lock
        self._give_back = give_back
        self._released = threading.Lock()

    def release(self, wait_gone: Callable[[], object] | None = None) -> None:
        """Give the lane back. `wait_gone`: returns once the processes this holder ran on the lane have exited, whose
        exits the lane's next holder in this process waits for (`Lanes.settle`) before it times anything; other
        processes get the lane only after them."""
        if not self._released.acquire(blocking=False):
            return
        # Connections queued on the lock are processes waiting for it (none in a forked child, which closed it).
        others_wait = self._lock.fileno() >= 0 and bool(select.select([self._lock], [], [], 0)[0])
        self._give_back(self.lane, self._lock, others_wait, wait_gone)


@dataclass
class _Exits:
    """The processes a lane's last holder killed, exiting: `gone` is set once they have, `lock` is the lane's lock
    while no other holder has taken it over."""

    gone: threading.Event
    lock: socket.socket | None
    earlier: _Exits | None  # the holder before's, which may still be exiting (a holder that timed nothing)


class Lanes:
    """The lanes of an evaluator; `take()` lends a free one. Thread-safe.

    `lock_scope` names the evaluators that take turns: those given the same scope do (every evaluator on a machine
    by default; a test may keep its lanes apart with a scope of its own).
    """

    def __init__(self, limits: Limits, device: str, spares: int, gpus: Sequence[int] | None,
                 lock_scope: str = MACHINE_SCOPE, warm_up: WarmUp | None = None, replenish: bool = True,
                 start_method: str = "forkserver") -> None:
        scope = hashlib.sha256(lock_scope.encode()).hexdigest()[:16]
        devices = _devices(device, gpus)
        lane_cpus, evaluator_cpus = lane_cores(len(devices))
        self._pinned = evaluator_cpus is not None and _pin_this_process(evaluator_cpus)
        if not self._pinned:
            lane_cpus, evaluator_cpus = [None] * len(devices), None
        self.lanes: list[Lane] = []
        for (name, worker_device, card, environment), cpus in zip(devices, lane_cpus):
            self.lanes.append(Lane(name, WorkerPool(limits, worker_device, spares, environment, warm_up, replenish,
                                                     start_method, evaluator_cpus),
                                   f"\0eplb-evaluator-{scope}-{name}", cpus, worker_device, card))
        self._free = list(self.lanes)
        self._condition = threading.Condition()
        self._courtesy_until: dict[str, float] = {}  # lane name -> when this process may take it again
        self._exits: dict[str, _Exits] = {}  # lane name -> the processes its last holder killed

    def take(self, name: str | None = None, give_up_at: float | None = None) -> Holding:
        """A lane no other thread or process uses until the holding is released: the one called `name`, else the
        longest free whose lock no other process holds (candidates spread over every device). Waits for one, until the
        monotonic time `give_up_at` if given. Raises `SandboxFailure` (infra_error) when it gives up or cannot lock.
        Call `settle` before timing anything on it."""
        while True:
            with self._condition:
                while not self._first_free(name):
                    if not self._condition.wait(_until(give_up_at)) and _past(give_up_at):
                        raise _gave_up(name or "any device")
                free = [lane for lane in self._free if name is None or lane.name == name]
            held_elsewhere = []
            for lane in free:
                holding = self._try_to_take(lane, give_up_at)
                if isinstance(holding, Holding):
                    return holding
                if holding is _HELD_ELSEWHERE:
                    held_elsewhere.append(lane.lock_address)
            if not held_elsewhere:
                continue  # threads of this process took them: wait for one to come back
            if _past(give_up_at):
                raise _gave_up(name or "any device")
            _wait_for_release(held_elsewhere, give_up_at)

    def _try_to_take(self, lane: Lane, give_up_at: float | None) -> Holding | object | None:
        """`lane`, if it is still free here and no other process holds its lock; else None where another thread took
        it, `_HELD_ELSEWHERE` where another process holds its lock."""
        with self._condition:
            if lane not in self._free:
                return None
            self._free.remove(lane)
            courtesy = self._courtesy_until.pop(lane.name, 0.0)
            exits = self._exits.get(lane.name)
            handed_over = exits.lock if exits else None
            if exits:
                exits.lock = None
        if handed_over is not None:  # still locked: its last holder's processes are exiting
            return Holding(lane, handed_over, self._give_back)
        try:
            _sleep_until(courtesy, give_up_at)
            lock = _bind(lane.lock_address)
        except BaseException as error:
            self._give_back(lane, None, False, None)
            if isinstance(error, OSError):
                raise SandboxFailure(Failure(Status.INFRA_ERROR,
                                             f"cannot lock device {lane.name}: {error}")) from None
            raise
        if lock is None:
            self._give_back(lane, None, False, None)
            return _HELD_ELSEWHERE
        return Holding(lane, lock, self._give_back)

    def settle(self, lane: Lane) -> None:
        """Wait until the processes that the last holder of `lane` (held by the caller) killed have exited: their
        teardown would slow what is timed beside it. Not on an isolated lane, whose workers are moved off its cores
        before they are killed (`Worker.close`): their exits run on the evaluator's cores, where a CUDA context's
        teardown does not slow a program timed on the lane's core and device (`bench pace`)."""
        if lane.isolated:
            return
        with self._condition:
            exits = self._exits.get(lane.name)
        if exits is not None:
            exits.gone.wait()

    def wait_for_spares(self) -> bool:
        """Wait until every lane's spare workers are ready; True if they are."""
        return all([lane.pool.wait_for_spares() for lane in self.lanes])

    def close(self) -> None:
        for lane in self.lanes:
            lane.pool.close()
        with self._condition:
            handed_over = [exits.lock for exits in self._exits.values() if exits.lock is not None]
            for exits in self._exits.values():
                exits.lock = None
        for lock in handed_over:
            _close(lock)
        if self._pinned:
            self._pinned = False
            _unpin_this_process()

    def _first_free(self, name: str | None) -> Lane | None:
        return next((lane for lane in self._free if name is None or lane.name == name), None)

    def _give_back(self, lane: Lane, lock: socket.socket | None, others_wait: bool,
                   wait_gone: Callable[[], object] | None) -> None:
        """Free `lane`, locked by `lock` (None: never locked). With processes exiting (`wait_gone`), it goes to a thread
        of this process at once, its lock handed over, unless other processes wait for it: then it is freed, for them
        first, once the processes are gone."""
        if lock is None or wait_gone is None or lock.fileno() < 0:  # < 0: closed in a forked child
            if lock is not None:
                _close(lock)
            self._free_lane(lane, others_wait)
            return
        with self._condition:
            earlier = self._exits.get(lane.name)
            exits = _Exits(threading.Event(), None if others_wait else lock,
                           None if earlier is None or earlier.gone.is_set() else earlier)
            self._exits[lane.name] = exits
            if not others_wait:
                self._free.append(lane)
                self._condition.notify_all()
        try:
            threading.Thread(target=self._after_exits, args=(lane, lock, exits, wait_gone, others_wait),
                             name="lane-release", daemon=True).start()
        except RuntimeError:  # no thread to spare: wait here
            self._after_exits(lane, lock, exits, wait_gone, others_wait)

    def _after_exits(self, lane: Lane, lock: socket.socket, exits: _Exits, wait_gone: Callable[[], object],
                     others_wait: bool) -> None:
        """Once the processes are gone: unlock the lane, unless a thread of this process took it over meanwhile."""
        try:
            wait_gone()
            if exits.earlier is not None:
                exits.earlier.gone.wait()
        finally:
            exits.gone.set()
            with self._condition:
                taken_over = not others_wait and exits.lock is not lock
                exits.lock = None
            if not taken_over:
                _close(lock)
            if others_wait:
                self._free_lane(lane, others_wait)

    def _free_lane(self, lane: Lane, others_wait: bool) -> None:
        with self._condition:
            if others_wait:
                self._courtesy_until[lane.name] = time.monotonic() + _COURTESY_S
            self._free.append(lane)
            self._condition.notify_all()


def _bind(address: str) -> socket.socket | None:
    """A socket bound to `address` and listening, or None if another socket holds it."""
    with _held_locks_guard:
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inherited by the workers we spawn
        _held_locks.add(lock)
        try:
            lock.bind(address)
            lock.listen(_BACKLOG)
            return lock
        except BaseException as error:
            _held_locks.discard(lock)
            lock.close()
            if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
                return None
            raise


def _wait_for_release(addresses: Sequence[str], give_up_at: float | None) -> None:
    """Sleep until a socket holding one of `addresses` closes, or `give_up_at`; briefly, if one does not listen or
    cannot queue another connection. The holders never write, and never accept: a waiter's connection stays queued on
    a holder's socket (which tells the holder that others wait, `Holding.release`) until that socket closes."""
    waiters = []
    try:
        for address in addresses:
            waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiters.append(waiter)
            waiter.settimeout(_until(give_up_at))
            try:
                waiter.connect(address)
            except (ConnectionRefusedError, FileNotFoundError, BlockingIOError, TimeoutError):
                # bound but not listening, just released, or its queue full: look again soon
                _sleep_until(time.monotonic() + _RETRY_S, give_up_at)
                return
        select.select(waiters, [], [], _until(give_up_at))  # readable once a holder's socket closes
    finally:
        for waiter in waiters:
            waiter.close()


def _close(lock: socket.socket) -> None:
    with _held_locks_guard:
        lock.close()
        _held_locks.discard(lock)


def _close_inherited_locks() -> None:
    for lock in _held_locks:
        lock.close()
    _held_locks.clear()
    _held_locks_guard.release()  # taken by the forking thread before the fork


os.register_at_fork(before=_held_locks_guard.acquire, after_in_parent=_held_locks_guard.release,
                    after_in_child=_close_inherited_locks)


def _sleep_until(moment: float, give_up_at: float | None) -> None:
    end = moment if give_up_at is None else min(moment, give_up_at)
    pause = end - time.monotonic()
    if pause > 0:
        time.sleep(pause)


def _until(give_up_at: float | None) -> float | None:
    return None if give_up_at is None else max(0.0, give_up_at - time.monotonic())


def _past(give_up_at: float | None) -> bool:
    return give_up_at is not None and time.monotonic() >= give_up_at


def _gave_up(what: str) -> SandboxFailure:
    return SandboxFailure(Failure(Status.INFRA_ERROR,
                                  f"gave up waiting for {what}: other evaluations held it until the deadline"))


def lane_cores(lanes: int, cores: Sequence[tuple[int, ...]] | None = None,
               ) -> tuple[list[tuple[int, ...] | None], list[int] | None]:
    """For each of `lanes` lanes the CPU its candidates run on (the first of a physical core whose other threads stay
    idle), and the CPUs of every other core, for the evaluator; none at all where that would leave the evaluator
    fewer than `MIN_EVALUATOR_CORES`. Lanes take cores from the last, away from the first, where the kernel's own
    work tends to land. `cores`: the physical cores to share out (default: this process's, as the kernel shows
    them)."""
    cores = physical_cores(usable_cpus()) if cores is None else list(cores)
    if len(cores) < lanes + MIN_EVALUATOR_CORES:
        return [None] * lanes, None
    return [(core[0],) for core in reversed(cores[-lanes:])], [cpu for core in cores[:-lanes] for cpu in core]


# This process's threads are kept off the lanes' cores while any evaluator in it has lanes; then they get back the
# CPUs they had.
_pinning_lock = threading.Lock()
_pinnings = 0
_cpus_before: set[int] = set()


@contextmanager
def on_the_evaluators_cores(cpus: Sequence[int] | None) -> Iterator[None]:
    """This process on `cpus` (the evaluator's, off the lanes': `lane_cores`) for the block, as an evaluator keeps
    itself; left where it is without them."""
    pinned = cpus is not None and _pin_this_process(cpus)
    try:
        yield
    finally:
        if pinned:
            _unpin_this_process()


def _pin_this_process(cpus: Sequence[int]) -> bool:
    """Move every thread of this process onto `cpus` (threads started later inherit them); False if it cannot."""
    global _pinnings, _cpus_before
    with _pinning_lock:
        if _pinnings == 0:
            _cpus_before = os.sched_getaffinity(0)
        try:
            pin_threads(os.getpid(), cpus)
        except OSError:
            return False
        _pinnings += 1
        return True


def _unpin_this_process() -> None:
    global _pinnings
    with _pinning_lock:
        _pinnings -= 1
        if _pinnings == 0:
            try:
                pin_threads(os.getpid(), sorted(_cpus_before))
            except OSError:
                pass


def first_lane_card(device: str, gpus: Sequence[int] | None) -> tuple[str, str]:
    """The device and card the first lane's workers would report (`WorkerInfo.device`, `.card`), found without
    starting one; raises ValueError as `Lanes` does for a device or GPUs that cannot be had."""
    _, worker_device, card, _ = _devices(device, gpus)[0]
    return worker_device, card


def _devices(device: str, gpus: Sequence[int] | None) -> list[tuple[str, str, str, dict[str, str]]]:
    """(lane name, the workers' device, their card, their extra environment) for each lane."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        if gpus:
            raise ValueError("GPUs were named, but candidates run on the CPU")
        return [("cpu", "cpu", cpu_model(), {})]
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(f"device 'cuda' was asked for, but torch {torch.__version__} sees no GPU")
    chosen = list(range(count)) if gpus is None else list(gpus)
    if not chosen or any(not 0 <= index < count for index in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"GPUs must be distinct indices among the {count} visible, got {list(gpus or [])}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",") if visible else [str(index) for index in range(count)]
    # each lane's workers see one GPU, as their device 0
    return [(f"cuda:{physical[index]}", "cuda", torch.cuda.get_device_name(index),
             {"CUDA_VISIBLE_DEVICES": physical[index]}) for index in chosen]
