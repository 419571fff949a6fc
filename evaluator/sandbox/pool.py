"""Spare workers started ahead, so a candidate never waits for torch to import or CUDA to start."""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from evaluator.sandbox.failures import Failure, SandboxFailure
from evaluator.status import Status
from evaluator.sandbox.limits import Limits
from evaluator.sandbox.launch import WarmUp, check_worker_options
from evaluator.sandbox.process import DEFAULT_ENTRY_POINT, Worker
from evaluator.sandbox.results import WorkerInfo

_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


class WorkerPool:
    """Keeps `spares` ready workers (torch imported, device initialised) and hands out one per candidate.

    Thread-safe: several threads may `acquire` at once. Spares start in parallel, in the background;
    each handed-out worker is replaced at once, unless `replenish` is False (a pool for a known, small
    number of workers: a spare starting beside a candidate being timed takes CPU, and device time on a GPU,
    from it). Then the spares of the start are all it starts ahead; a later `acquire` starts a worker for
    itself. Spares start on `cpus` (default: wherever this process may run). Workers are forked from a zygote
    that imported torch once (`start_method="forkserver"`), or each spawned as a new interpreter (`"spawn"`). A
    worker serves one candidate and is then closed by its user.
    `close()` (also on context exit and at interpreter exit) kills every spare.
    """

    def __init__(self, limits: Limits = Limits(), device: str = "auto", spares: int = 1,
                 environment: Mapping[str, str] | None = None, warm_up: WarmUp | None = None,
                 replenish: bool = True, start_method: str = "forkserver", cpus: Sequence[int] | None = None) -> None:
        if spares < 0:
            raise ValueError(f"spares must be at least 0, got {spares}")
        check_worker_options(device, start_method)
        self.limits = limits
        self.device = device
        self.spares = spares
        self._replenish_spares = replenish
        self._environment = dict(environment or {})
        self._warm_up = warm_up
        self._start_method = start_method
        self._cpus = cpus
        self._info: WorkerInfo | None = None
        self._condition = threading.Condition()
        self._ready: list[Worker] = []
        self._starting: set[Worker] = set()
        self._launching = 0  # start threads that have not yet created their Worker
        self._waiters = 0
        self._starts_begun = 0
        # the last start that failed: the number it began as, and why. A caller waiting for a worker gives up on a
        # failure only of a start begun for it: a spare that failed earlier (its warm-up ran out of GPU memory while
        # another program held it, say) does not make the next start fail
        self._start_failure: tuple[int, Failure] | None = None
        self._closed = False
        self._quiet = 0  # blocks inside which no spares start
        _live_pools.add(self)
        with self._condition:
            self._replenish()

    # ---- public -------------------------------------------------------------------------------

    def acquire(self, timeout_s: float | None = None) -> Worker:
        """A ready worker, for one candidate; the caller closes it. Raises `SandboxFailure` (infra_error)
        when no worker could be started or the pool is closed."""
        timeout = self.limits.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        with self._condition:
            first_start = self._starts_begun
            self._waiters += 1
            if not self._replenish_spares:
                self.spares = 0  # those started so far are all that start ahead
            try:
                while True:
                    if self._closed:
                        raise SandboxFailure(Failure(Status.INFRA_ERROR,
                                                     "the worker pool was closed while a worker was needed"))
                    worker = self._take_ready()
                    if worker is not None:
                        self._info = self._info or worker.info
                        return worker
                    if self._start_failure is not None and self._start_failure[0] >= first_start:
                        raise SandboxFailure(self._start_failure[1])  # one started for us failed: the next would too
                    self._replenish()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SandboxFailure(Failure(Status.INFRA_ERROR,
                                                     f"no worker became ready within {timeout:.0f} s"))
                    self._condition.wait(remaining)
            finally:
                self._waiters -= 1
                self._replenish()

    def worker_info(self, timeout_s: float | None = None) -> WorkerInfo:
        """What its workers report (device, card, versions): of the first that became ready, waiting for one if none
        has. Raises `SandboxFailure` (infra_error) as `acquire` does."""
        with self._condition:
            if self._info is None and self._ready:
                self._info = self._ready[0].info
        if self._info is None:
            worker = self.acquire(timeout_s)
            with self._condition:
                self._ready.insert(0, worker)  # not used: the next caller takes it
                self._condition.notify_all()
        assert self._info is not None
        return self._info

    def launch(self, program: str | os.PathLike[str], entry_point: str = DEFAULT_ENTRY_POINT,
               import_timeout_s: float | None = None) -> Worker:
        """A ready worker with `program` loaded; raises `SandboxFailure` (the worker is then already gone)."""
        worker = self.acquire()
        try:
            worker.load(program, entry_point, import_timeout_s)
        except BaseException:
            worker.close()
            raise
        return worker

    def wait_for_spares(self, timeout_s: float | None = None) -> bool:
        """Wait until all `spares` workers are ready; True if they are."""
        deadline = time.monotonic() + (self.limits.start_timeout_s if timeout_s is None else timeout_s)
        with self._condition:
            while len(self._ready) < self.spares:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or (
                        self._start_failure is not None and not self._starting and not self._launching):
                    return False
                self._condition.wait(remaining)
            return True

    def close(self) -> None:
        """Kill every spare, and those still starting, and return once no start is under way: a start that raced
        with the close has killed its worker by then. Workers already handed out stay with their users."""
        with self._condition:
            self._closed = True
            workers = [*self._ready, *self._starting]
            self._ready.clear()
            self._condition.notify_all()
        for worker in workers:
            worker.close()
        deadline = time.monotonic() + self.limits.start_timeout_s
        with self._condition:
            while (self._launching or self._starting) and time.monotonic() < deadline:
                self._condition.wait(deadline - time.monotonic())
        _live_pools.discard(self)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- background starts ---------------------------------------------------------------------

    def _take_ready(self) -> Worker | None:
        while self._ready:
            worker = self._ready.pop(0)
            if worker.is_ready():
                return worker
            worker.close()  # a spare that died while waiting
        return None

    @contextmanager
    def quiet(self, timeout_s: float | None = None) -> Iterator[None]:
        """Let the spares already starting finish, then start none inside this block (unless a caller waits
        for one): a worker importing torch takes a core for seconds, which a worker timed beside it would feel."""
        deadline = time.monotonic() + (self.limits.start_timeout_s if timeout_s is None else timeout_s)
        with self._condition:
            self._quiet += 1
            while (self._starting or self._launching) and not self._closed and time.monotonic() < deadline:
                self._condition.wait(deadline - time.monotonic())
        try:
            yield
        finally:
            with self._condition:
                self._quiet -= 1
                self._replenish()

    def _replenish(self) -> None:
        """Start as many workers as the spares and the waiting callers need. Holds the condition."""
        if self._closed:
            return
        spares = 0 if self._quiet else self.spares
        needed = spares + self._waiters - len(self._ready) - len(self._starting) - self._launching
        for _ in range(max(0, needed)):
            self._launching += 1
            threading.Thread(target=self._start_one, args=(self._starts_begun,), name="sandbox-spare",
                             daemon=True).start()
            self._starts_begun += 1

    def _start_one(self, number: int) -> None:
        worker: Worker | None = None
        failure: Failure | None = None
        try:
            worker = Worker(self.limits, self.device, self._environment, self._warm_up, self._start_method, self._cpus)
        except SandboxFailure as error:
            failure = error.failure
        except Exception as error:  # the host out of descriptors, say: a failed start, never a lost count
            failure = Failure(Status.INFRA_ERROR, f"could not start a worker: {error}")
        with self._condition:
            self._launching -= 1
            if worker is not None:
                self._starting.add(worker)
            closed = self._closed
        if worker is not None and not closed:
            try:
                worker.wait_ready()
            except SandboxFailure as error:
                failure = error.failure
            except (RuntimeError, OSError) as error:
                if not self._closed:  # else `close()` killed it while starting, its pipes closed under the read
                    failure = Failure(Status.INFRA_ERROR, f"a worker failed while starting: {error}")
        with self._condition:
            if worker is not None and failure is None and worker.is_ready() and not self._closed:
                self._starting.discard(worker)
                self._ready.append(worker)
                worker = None
            if failure is not None:
                self._start_failure = (number, failure)
            self._condition.notify_all()
        if worker is not None:
            worker.close()  # counted as starting until it is gone, so that `close()` waits for it
            with self._condition:
                self._starting.discard(worker)
                self._condition.notify_all()


# A forked child does not own its parent's pools: it must not kill their workers when it exits.
os.register_at_fork(after_in_child=_live_pools.clear)


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()
