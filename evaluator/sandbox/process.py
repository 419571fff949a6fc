"""The evaluator's side of one worker process: talk to it, watch it, kill it, classify how it ended. How it starts is
launch.py; how its replies are read, replies.py."""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import psutil
from numpy.typing import ArrayLike

from evaluator.files import remove_tree
from evaluator.sandbox import channel, gpu_memory, launch, memory_files, proctree, replies
from evaluator.sandbox.capture import CapturedOutput, OutputCapture
from evaluator.sandbox.cpus import pin_threads
from evaluator.sandbox.failures import Failure, SandboxFailure
from evaluator.sandbox.launch import WarmUp, check_worker_options
from evaluator.sandbox.limits import Limits
from evaluator.sandbox.proctree import ProcessTree, proportional_bytes
from evaluator.sandbox.results import BatchResult, CallResult, WorkerInfo
from evaluator.scratch import scratch_folder
from evaluator.status import Status

DEFAULT_ENTRY_POINT = "rebalance_experts"
WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.int64))
# A worker's tree is sampled this often once a program is loaded in it; before, only our own code runs there, and
# the samples of many idle spares would take the evaluator's interpreter from the candidate being timed.
_WATCH_INTERVAL_S = 0.02
_IDLE_WATCH_INTERVAL_S = 0.5
# GPU memory, as the driver counts it: a read takes about 2 ms on an H100 host (the driver asks the GPU), so it is
# read after the load and the first batch, then after a batch only this long after the last read, and during a call
# this often
_GPU_READ_INTERVAL_S = 0.25
_GPU_WATCH_INTERVAL_S = 1.0
_REAP_TIMEOUT_S = 10.0
_SWEEPS = 3  # kill-and-reap rounds after the first, for strays the first could not see
_STREAM_JOIN_TIMEOUT_S = 2.0
_EXIT_GRACE_S = 1.0  # how long a worker that closed its channel gets to report an exit code
_PAUSE_WAIT_S = 0.2  # for SIGSTOP to take effect on every process of a paused worker
_MESSAGE_TAIL_CHARS = 3000  # of stderr, appended to a crash's message
_REPORTED_MESSAGE_CHARS = 20_000  # of a failure message the worker sends
_live_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


class Worker:
    """One worker process, for one candidate. Not for use by several threads at once.

    The constructor spawns the process (on `cpus`, if given), which imports torch and initialises `device` ("auto":
    cuda when available, else cpu) in the background; `wait_ready` waits for it. Then `load` a program
    once and `call` its entry point any number of times. Every failure kills the worker and its
    whole tree and raises `SandboxFailure`; `close` does the same kill without a failure.
    """

    def __init__(self, limits: Limits = Limits(), device: str = "auto",
                 environment: Mapping[str, str] | None = None, warm_up: WarmUp | None = None,
                 start_method: str = "spawn", cpus: Sequence[int] | None = None) -> None:
        check_worker_options(device, start_method)
        if not launch.prepare_this_process_once():
            start_method = "spawn"  # a forked worker could not be handed over to us
        self.limits = limits
        self.info: WorkerInfo | None = None
        self._state = "starting"
        self._failure: Failure | None = None
        self._verdict: tuple[Status, str] | None = None  # set by the watchdog before it kills
        self._calls = 0
        self._entry_point = DEFAULT_ENTRY_POINT
        self._kill_lock = threading.Lock()
        self._killed: list[psutil.Process] | None = None
        self._reaped = False
        self._gone = threading.Event()  # every process collected, our resources released
        self._stop_watching = threading.Event()
        self._program_loaded = threading.Event()  # the watchdog's cue to sample often
        self._start_cpus = tuple(cpus) if cpus else None
        self._moved = False  # onto other CPUs than it started on, by `prepare`
        self._gpu_count: gpu_memory.DriverCount | None = None  # set once ready, where the driver counts GPU memory
        self._gpu_held_when_ready = 0
        self._gpu_read_at = -math.inf  # time.monotonic() of the last read
        self._gpus: tuple[int, ...] = ()  # where the worker held GPU memory when it became ready
        arguments = ["--device", device, "--gpu-memory-mb", str(limits.gpu_memory_mb),
                     *(warm_up.command_line() if warm_up else []),
                     *([] if limits.confined else ["--unconfined"])]
        self._workdir = str(scratch_folder("worker-"))
        try:
            self._process, handles, marker = launch.start_worker_process(start_method, arguments, environment,
                                                                         self._workdir, limits)
        except BaseException:
            remove_tree(self._workdir)
            raise
        # the exchange is counted where the worker maps it, not again as a file it holds
        self._not_counted = frozenset({memory_files.file_identity(handles.theirs["exchange"])})
        # its files count as memory only where its folder is in memory, which its life does not change
        self._folder_in_memory = Path(self._workdir) if memory_files.in_memory(Path(self._workdir)) else None
        handles.close_theirs()  # only the worker may hold its ends
        if cpus:
            try:
                pin_threads(self._process.pid, cpus)
            except OSError:  # gone already: its start reports why
                pass
        self._command_fd, self._result_fd, stdout_read, stderr_read = handles.ours
        self._exchange = handles.exchange
        self._writer = channel.FrameWriter(self._command_fd)
        self._reader = channel.FrameReader(self._result_fd)
        self._stdout = OutputCapture(open(stdout_read, "rb", buffering=0), limits.output_bytes, "stdout")
        self._stderr = OutputCapture(open(stderr_read, "rb", buffering=0), limits.output_bytes, "stderr")
        self._tree = ProcessTree(self._process.pid, f"{launch.MARKER_VARIABLE}={marker}".encode())
        self._watchdog = threading.Thread(target=self._watch, name="sandbox-watchdog", daemon=True)
        self._watchdog.start()
        _live_workers.add(self)

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def start(cls, limits: Limits = Limits(), device: str = "auto", environment: Mapping[str, str] | None = None,
              warm_up: WarmUp | None = None, start_method: str = "spawn", cpus: Sequence[int] | None = None) -> Worker:
        """Start a worker and wait until it is ready."""
        worker = cls(limits, device, environment, warm_up, start_method, cpus)
        worker.wait_ready()
        return worker

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_ready(self) -> bool:
        """Ready for `load` and its process still running."""
        return self._state == "ready" and self._process.poll() is None

    def is_loaded(self) -> bool:
        """A program loaded, and its process still running."""
        return self._state == "loaded" and self._process.poll() is None

    def wait_ready(self, timeout_s: float | None = None) -> WorkerInfo:
        """Wait for the worker to import torch and initialise its device. Failures are `infra_error`."""
        self._expect_state("starting")
        timeout = self.limits.start_timeout_s if timeout_s is None else timeout_s
        header = self._receive(time.monotonic() + timeout, timeout, "the worker's start", infra=True)
        if header.get("op") == "fail" and header.get("kind") == Status.INFRA_ERROR.value:
            self._fail(Status.INFRA_ERROR, replies.text(header.get("message")))
        try:
            if header.get("op") != "ready":
                raise channel.ProtocolError(f"expected a 'ready' message, got {header.get('op')!r}")
            self.info = WorkerInfo(
                pid=replies.field(header, "pid", int), device=replies.field(header, "device", str),
                card=replies.field(header, "card", str), torch_version=replies.field(header, "torch", str),
                cuda_version=replies.field(header, "cuda", (str, type(None))), confinement=replies.confinement(header),
                ready_monotonic=time.monotonic())
        except channel.ProtocolError as error:
            self._fail(Status.INFRA_ERROR, f"the worker sent a malformed ready message: {error}")
        used, _ = self._memory_used()
        if used > self.limits.memory_bytes:  # its own start, before any program: the limit is the evaluator's fault
            self._fail(Status.INFRA_ERROR,
                       f"a worker uses {used / 2**20:.0f} MiB of host memory before any program is loaded, over the "
                       f"limit of {self.limits.memory_mb} MiB; give candidates more memory")
        if self.info.device == "cuda":
            self._count_gpu_memory()
        self._state = "ready"
        return self.info

    def _count_gpu_memory(self) -> None:
        """Where the driver counts what this worker holds on its GPU, remember it as the part the limit leaves out."""
        count = gpu_memory.driver_count()
        held = count.held(self._owns) if count is not None else None
        if held:  # else the driver does not see this process (another PID namespace) or will not say
            self._gpu_count, self._gpus = count, tuple(held)
            self._gpu_held_when_ready = sum(held.values())
            assert self.info is not None
            self.info = dataclasses.replace(self.info, gpu_memory_counted=True)

    def prepare(self, cpus: Sequence[int] | None = None, timeout_s: float | None = None) -> None:
        """Before `load`: move the worker (every thread it has) onto `cpus` and have it use that many threads for the
        CPU's work; without `cpus`, leave it where it is and have it use one, as on a core of its own (more would be
        timed against whatever else the machine runs). Raises `SandboxFailure` (infra_error)."""
        self._expect_state("ready")
        timeout = self.limits.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        what = "preparing the worker"
        if cpus:
            # set first: a move that fails part way has left some threads on `cpus`, to be moved back
            self._moved = self._start_cpus is not None and set(cpus) != set(self._start_cpus)
            try:
                pin_threads(self.pid, cpus)
            except OSError as error:
                self._fail(Status.INFRA_ERROR, f"could not move the worker onto CPUs {sorted(cpus)}: {error}")
        self._send({"op": "prepare", "threads": len(cpus) if cpus else 1}, deadline, timeout, what)
        reply = self._receive(deadline, timeout, what, infra=True)
        if reply.get("op") != "prepared":
            self._fail(Status.INFRA_ERROR, replies.text(reply.get("message", f"unexpected reply {reply.get('op')!r}")))

    def pause(self) -> None:
        """Stop every process of the worker's tree (SIGSTOP to its process group, which none of them can leave), and
        wait briefly until they are: none runs an instruction until `resume`."""
        if self._state in ("closed", "failed"):
            return
        self._process.signal_group(signal.SIGSTOP)
        proctree.wait_until_stopped([self.pid, *proctree.descendants(self.pid)], time.monotonic() + _PAUSE_WAIT_S)

    def resume(self) -> None:
        """Let the processes `pause` stopped run again."""
        if self._state not in ("closed", "failed"):
            self._process.signal_group(signal.SIGCONT)

    def load(self, program: str | os.PathLike[str], entry_point: str = DEFAULT_ENTRY_POINT,
             timeout_s: float | None = None) -> None:
        """Import the candidate program in the worker and find its entry point.

        Raises `SandboxFailure` (import_error, missing_function, timeout, crash, memory_limit).
        """
        path = Path(program).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"candidate program not found: {path}")
        self._expect_state("ready")
        self._state = "loading"
        self._program_loaded.set()
        timeout = self.limits.import_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        what = f"the import of {path.name}"
        self._send({"op": "load", "path": str(path), "entry_point": entry_point}, deadline, timeout, what)
        header = self._receive(deadline, timeout, what)
        if header.get("op") == "loaded":
            self._entry_point = entry_point
            self._state = "loaded"
            self._check_gpu_memory(always=True)
            return
        self._fail_reported(header, (Status.IMPORT_ERROR, Status.MISSING_FUNCTION, Status.MEMORY_LIMIT),
                            what)

    def call(self, weight: ArrayLike, args: Sequence[int], timeout_s: float | None = None) -> CallResult:
        """Call the entry point as `entry_point(weight_tensor, *args)` on the worker's device: a batch of one.
        Raises `SandboxFailure` (exception, timeout, crash, memory_limit)."""
        return self.batch([weight], args, timeout_s).calls[0]

    def batch(self, weights: Sequence[ArrayLike], args: Sequence[int], timeout_s: float | None = None) -> BatchResult:
        """Call the entry point on each of `weights` (float32 or int64 arrays), back to back in the worker, with the
        device synchronised before the first call and after the last only.

        The inputs cross in the exchange and go to the device inside the round trip (`round_trip_ns`, the
        evaluator's clock, from before the inputs are written to the reply's arrival) but outside the worker's own
        timing (`claim_ns`); so do the outputs, on their way back. `timeout_s` bounds the whole batch.
        Raises `SandboxFailure` (exception, timeout, crash, memory_limit).
        """
        arrays = [np.asarray(weight) for weight in weights]
        if not arrays or any(array.dtype not in WEIGHT_DTYPES for array in arrays):
            raise ValueError(f"weights must be float32 or int64 arrays, at least one, got "
                             f"{[array.dtype.name for array in arrays]}")
        if not all(isinstance(arg, (int, np.integer)) for arg in args):
            raise ValueError(f"args must be integers, got {list(args)!r}")
        self._expect_state("loaded")
        first = self._calls + 1
        self._calls += len(arrays)
        what = (f"call {first} of {self._entry_point}" if len(arrays) == 1
                else f"calls {first} to {self._calls} of {self._entry_point} (one batch)")
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        # stamped before the inputs are written: a thread of the candidate's can watch the exchange for them
        started_ns = time.perf_counter_ns()
        described, outputs_start = self._exchange.write_inputs(arrays)
        self._send({"op": "batch", "args": [int(arg) for arg in args], "inputs": described}, deadline, timeout, what)
        header = self._receive(deadline, timeout, what)
        round_trip_ns = time.perf_counter_ns() - started_ns
        if header.get("op") != "batch_result":
            self._fail_reported(header, (Status.EXCEPTION, Status.MEMORY_LIMIT), what)
        self._check_gpu_memory(always=first == 1)
        try:
            return replies.batch_result(header, self._exchange, outputs_start, len(arrays), first, round_trip_ns)
        except channel.ProtocolError as error:
            self._fail(Status.CRASH, f"the worker sent a malformed result for {what}: {error}")

    def output(self) -> tuple[CapturedOutput, CapturedOutput]:
        """What the worker wrote to stdout and stderr so far (bounded)."""
        return self._stdout.snapshot(), self._stderr.snapshot()

    def close(self, wait: bool = True) -> None:
        """Kill the worker and everything it started. Idempotent.

        Every process is stopped and sent SIGKILL before this returns, so none runs another
        instruction, and its folder is gone, so that no process started later finds what it left there
        (the recheck's, a plan). With `wait`, it also waits for them to exit and be collected (for a CUDA
        worker the driver's teardown takes about 0.1 s); without, that finishes on a background thread.
        """
        if self._state in ("closed", "failed"):
            return
        self._state = "closed"
        if wait:
            self._terminate()
            return
        self._stop_watchdog()
        if self.info is not None and self.info.confinement.calls_filtered:
            # none of its processes can have left its group: one signal kills them all at once, and the tree's own
            # kill (slower: it lists the processes) follows on the background thread
            self._move_back()
            self._process.kill_group()
        else:
            self._kill()
        if not remove_tree(self._workdir):  # a write in flight as the kill landed: wait till none can be
            self._terminate()
            return
        try:
            threading.Thread(target=self._terminate, name="sandbox-reaper", daemon=True).start()
        except RuntimeError:  # no thread to spare: collect them here
            self._terminate()

    def wait_gone(self, timeout_s: float | None = None) -> bool:
        """After `close`: wait until every process of the worker has exited and been collected; True if so."""
        return self._gone.wait(timeout_s)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- channel ---------------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._verdict is None and self._process.poll() is None

    def _expect_state(self, expected: str) -> None:
        if self._state == "failed" and self._failure is not None:
            raise SandboxFailure(self._failure)
        if self._state != expected:
            raise RuntimeError(f"worker {self.pid} is {self._state}, not {expected}")

    def _send(self, header: dict[str, Any], deadline: float, timeout: float, what: str) -> None:
        try:
            self._writer.write(channel.encode(header), deadline, self._alive)
        except channel.ChannelTimeout:
            self._fail_timeout(what, timeout)
        except channel.ChannelClosed:
            self._fail_ended(what, infra=False)
        except BaseException:
            self._terminate()  # KeyboardInterrupt and the like: never leave a worker behind
            raise

    def _receive(self, deadline: float, timeout: float, what: str, infra: bool = False) -> dict[str, Any]:
        try:
            return self._reader.read(deadline, self._alive)
        except channel.ChannelTimeout:
            self._fail_timeout(what, timeout, infra)
        except channel.ChannelClosed:
            self._fail_ended(what, infra)
        except channel.ProtocolError as error:
            kind = Status.INFRA_ERROR if infra else Status.CRASH
            self._fail(kind, f"the worker's channel carried a malformed message during {what} ({error}); the "
                             "program must not write to file descriptors it did not open")
        except BaseException:
            self._terminate()
            raise

    # ---- failures --------------------------------------------------------------------------

    def _fail(self, kind: Status, message: str) -> NoReturn:
        returncode = self._process.poll()
        if self._verdict is not None:  # the watchdog's reason wins over the symptoms its kill caused
            verdict_kind, message = self._verdict
            kind = Status.INFRA_ERROR if self._state == "starting" else verdict_kind
            returncode = None  # we killed it: no exit code of its own
        self._terminate()
        _, exit_code, signal_name = replies.describe_exit(returncode) if returncode is not None else (None, None, None)
        stdout, stderr = self.output()
        self._failure = Failure(kind, message, stdout, stderr, exit_code, signal_name)
        self._state = "failed"
        raise SandboxFailure(self._failure)

    def _fail_timeout(self, what: str, timeout: float, infra: bool = False) -> NoReturn:
        if infra:
            self._fail(Status.INFRA_ERROR, f"{what} took more than {timeout:g} s; the host may be overloaded "
                                                "or torch slow to import")
        self._fail(Status.TIMEOUT, f"{what} did not finish within {timeout:g} s; the worker and every "
                                        "process it started were killed. Look for an endless loop, a wait "
                                        "that never ends, or work far slower than needed")

    def _fail_ended(self, what: str, infra: bool) -> NoReturn:
        try:
            returncode = self._process.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            returncode = None
        if self._verdict is None and returncode is None:
            message = (f"the worker closed its private channel during {what} but kept running: the program must "
                       "not close file descriptors it did not open")
        else:
            phrase = replies.describe_exit(returncode)[0] if returncode is not None else "was killed"
            message = f"the worker {phrase} during {what}, before returning a result"
        stderr_tail = self._stderr.snapshot().last_lines(_MESSAGE_TAIL_CHARS)
        if stderr_tail.strip():
            message += f"\nlast lines of stderr:\n{stderr_tail}"
        self._fail(Status.INFRA_ERROR if infra else Status.CRASH, message)

    def _fail_reported(self, header: dict[str, Any], allowed: tuple[Status, ...], what: str) -> NoReturn:
        """A failure the worker reported itself, trusted only for kinds it may report at this step:
        a candidate must not be able to claim `infra_error` and escape its score."""
        kind = header.get("kind")
        if (header.get("op") != "fail" or not isinstance(kind, str)
                or kind not in {allowed_kind.value for allowed_kind in allowed}):
            self._fail(Status.CRASH, f"the worker sent an unexpected message during {what}: "
                                          f"op {header.get('op')!r}, kind {kind!r}")
        message = replies.text(header.get("message"))[:_REPORTED_MESSAGE_CHARS]
        if kind == Status.MEMORY_LIMIT.value:
            self._check_gpu_memory(always=True)
            crowded = self._gpu_crowded_out()
            if crowded is not None:
                self._fail(Status.INFRA_ERROR, f"{crowded}\n{message}")
        self._fail(Status(kind), message)

    # ---- watching and killing ---------------------------------------------------------------

    def _watch(self) -> None:
        """Sample the tree's memory and process count; kill it the moment it goes over a limit."""
        limits = self.limits
        while not self._stop_watching.is_set():
            if not self._program_loaded.is_set():
                self._program_loaded.wait(_IDLE_WATCH_INTERVAL_S)  # wakes the moment a program is loaded
            elif self._stop_watching.wait(_WATCH_INTERVAL_S):
                return
            try:
                usage = self._tree.usage()
                if usage.processes > limits.max_processes:
                    self._kill_for(Status.CRASH,
                                   f"the program had {usage.processes} processes running, over the limit of "
                                   f"{limits.max_processes}; they were all killed")
                    return
                used, in_files = self._memory_used(usage)
                if used > limits.memory_bytes:
                    files = (f" ({in_files / 2**20:.0f} MiB of it in files kept in memory: a memfd, tmpfs or "
                             "/dev/shm)" if in_files else "")
                    self._kill_for(Status.MEMORY_LIMIT,
                                   f"the program's processes used {used / 2**20:.0f} MiB of host memory{files}, over "
                                   f"the limit of {limits.memory_mb} MiB; they were all killed")
                    return
                if self._gpu_count is not None and time.monotonic() - self._gpu_read_at > _GPU_WATCH_INTERVAL_S:
                    over = self._gpu_memory_over_limit()
                    if over is not None:
                        self._kill_for(Status.MEMORY_LIMIT, over)
                        return
            except Exception:  # a process vanishing mid-sample is normal; the next sample sees the truth
                continue

    def _gpu_memory_held(self) -> int:
        """What the worker's processes hold of GPU memory beyond what it held when it became ready."""
        assert self._gpu_count is not None
        held = self._gpu_count.held(self._owns) or {}
        return sum(held.values()) - self._gpu_held_when_ready

    def _owns(self, pid: int) -> bool:
        """Whether `pid`, a process using a GPU, is of this worker's tree. Asked after every reply, so the usual answers
        (the worker itself, another worker) read nothing from /proc."""
        if pid == self.pid:
            return True
        if any(worker.pid == pid for worker in list(_live_workers)):
            return False
        return self._tree.is_ours(pid) or pid in self._tree.members(include_strays=False)

    def _gpu_memory_over_limit(self) -> str | None:
        """Why the worker's processes are over the GPU memory limit, if they are."""
        if self._gpu_count is None:
            return None
        self._gpu_read_at = time.monotonic()
        held = self._gpu_memory_held()
        if held <= self.limits.gpu_memory_bytes:
            return None
        return (f"the program's processes held {held / 2**20:.0f} MiB of GPU memory (as the driver counts it, beyond "
                f"the worker's own start), over the limit of {self.limits.gpu_memory_mb} MiB; they were all killed")

    def _check_gpu_memory(self, always: bool = False) -> None:
        """After a reply (`always`, or if the last read is `_GPU_READ_INTERVAL_S` old): fail as `memory_limit` if the
        tree holds more GPU memory than allowed, however it allocated it."""
        if not always and time.monotonic() - self._gpu_read_at < _GPU_READ_INTERVAL_S:
            return
        over = self._gpu_memory_over_limit()
        if over is not None:
            self._fail(Status.MEMORY_LIMIT, over)

    def _gpu_crowded_out(self) -> str | None:
        """After the worker ran out of memory within its GPU memory limit: why it is not the program's fault, if
        its GPU had less free than the limit still allowed it (other processes held the rest)."""
        if self._gpu_count is None:
            return None
        allowed = self.limits.gpu_memory_bytes - max(0, self._gpu_memory_held())
        frees = [self._gpu_count.free(index) for index in self._gpus]
        free = None if None in frees else min(frees)
        if free is None or free >= allowed:
            return None
        return (f"the GPU ran out of memory while the program was within its limit: it had {free / 2**20:.0f} MiB "
                f"free and the program was still allowed {allowed / 2**20:.0f} MiB; other processes held the rest. "
                "What the program reported:")

    def _move_back(self) -> None:
        """Before the kill: move the worker and every process it started back onto the CPUs it started on, if
        `prepare` moved it. Their exits (a CUDA context's teardown takes about 0.1 s of CPU) then run there, not on the
        cores the next program is timed on, and the next program is timed while they exit (`Lanes.settle`). The
        group is stopped first, so that no process or thread starts on the lane's cores while they are moved."""
        if self._moved and self._start_cpus is not None:
            self._moved = False
            self._process.signal_group(signal.SIGSTOP)
            for pid in self._tree.members(include_strays=False):  # orphans go to the worker, a subreaper
                try:
                    pin_threads(pid, self._start_cpus)
                except OSError:  # gone already
                    pass

    def _stop_watchdog(self) -> None:
        self._stop_watching.set()
        self._program_loaded.set()  # a watchdog waiting for a program sees the stop at once

    def _memory_used(self, usage: proctree.TreeUsage | None = None) -> tuple[int, int]:
        """The host memory the worker's processes use, each shared page counted once (as the limit counts it), and
        how much of it is files: their resident sets' sum, and only where that is over the limit their proportional
        sets' (slower to read); and the files in memory they hold or keep in the worker's folder (memory_files.py)."""
        usage = usage or self._tree.usage()
        limit = self.limits.memory_bytes
        files = memory_files.memory_file_bytes(usage.pids, self._folder_in_memory, self._not_counted, limit)
        over = usage.resident_bytes + files > limit
        return (proportional_bytes(usage.pids) if over else usage.resident_bytes) + files, files

    def _kill_for(self, kind: Status, message: str) -> None:
        if self._verdict is None and self._state in ("loading", "loaded", "ready", "starting"):
            self._verdict = (kind, message)
            self._kill()

    def _kill(self) -> None:
        with self._kill_lock:
            if self._killed is None:
                self._move_back()
                self._killed = self._tree.kill()  # first: the worker, a subreaper, holds its tree together
                # then the worker's process group, which a confined process cannot leave: a process that erased
                # its marker and was never sampled is in it too
                self._process.kill_group()

    def _terminate(self) -> None:
        """Kill the tree, collect every process, drain the streams and release our resources."""
        self._stop_watchdog()
        self._kill()
        with self._kill_lock:
            if self._reaped:
                return  # another thread collects them
            self._reaped = True
        try:
            self._collect()
        finally:
            self._gone.set()

    def _collect(self) -> None:
        with self._kill_lock:
            try:
                self._process.wait(_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + _REAP_TIMEOUT_S
            killed = self._killed or []
            for _ in range(_SWEEPS):
                ProcessTree.reap([process for process in killed if process.pid != self.pid], deadline)
                killed = self._tree.kill()  # with the root gone: any stray that still carries our marker
                if not killed:
                    break
            proctree.reap_group_children(self.pid, deadline)  # those the group's kill found, orphaned to us
        self._stdout.finish(_STREAM_JOIN_TIMEOUT_S)
        self._stderr.finish(_STREAM_JOIN_TIMEOUT_S)
        for fd in (self._command_fd, self._result_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._exchange.close()
        remove_tree(self._workdir)
        _live_workers.discard(self)


def _forget_parent_workers() -> None:
    """A forked child owns none of its parent's workers: it must not kill them when it exits."""
    _live_workers.clear()


os.register_at_fork(after_in_child=_forget_parent_workers)


@atexit.register
def _close_live_workers() -> None:
    for worker in list(_live_workers):
        try:
            worker.close()
        except Exception:
            pass
