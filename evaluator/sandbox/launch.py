"""How a worker process comes to be: its options, its environment, its descriptors, and its start (forked from the
zygote or spawned), with the guard told of it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import evaluator
from evaluator.sandbox import exchange, forkserver, guard, proctree
from evaluator.sandbox.confinement import FOLDER_VARIABLES, set_dumpable
from evaluator.sandbox.failures import Failure, SandboxFailure
from evaluator.sandbox.limits import Limits
from evaluator.sandbox.proctree import GroupLeader, become_subreaper
from evaluator.status import Status

MARKER_VARIABLE = "EPLB_SANDBOX_WORKER"
# "spawn": a new interpreter per worker (python evaluator/sandbox/spawned_worker.py); "forkserver": forked from a zygote
# that imported torch once (see zygote.py)
START_METHODS = ("spawn", "forkserver")
# the only variables of the evaluator's environment a worker sees; secrets stay behind
PASSED_VARIABLES = (
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VIRTUAL_ENV",
)
# and the GPU stack's settings (visible devices, driver capabilities, switches a host may require)
PASSED_PREFIXES = ("CUDA_", "NVIDIA_", "NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM_")
# how long, after a fork the zygote did not report, a worker forked all the same is watched for and killed
_STRAY_WATCH_S = 20.0
_PACKAGE_ROOT = str(Path(evaluator.__file__).resolve().parent.parent)
_SPAWNED_WORKER = str(Path(__file__).resolve().parent / "spawned_worker.py")

_subreaper_lock = threading.Lock()
_subreaper_set = False


@dataclass(frozen=True)
class WarmUp:
    """A trusted program a fresh worker runs on random loads before it reports ready, then forgets: the device
    kernels most candidates use, and those of the call's own machinery, are loaded by then, so a candidate's
    first call is not a cold one (for the seed patch's program on an H100, a cold first call took 339 ms and a
    warm one 18 ms)."""

    program: Path
    weight_shape: tuple[int, int]  # (layers, logical experts)
    args: tuple[int, ...]  # the entry point's arguments after the weight
    calls: int = 3
    weight_dtype: str = "int64"  # as the candidates' inputs: kernels are loaded per dtype

    def command_line(self) -> list[str]:
        return ["--warm-up-program", str(self.program), "--warm-up-shape", _ints(self.weight_shape),
                "--warm-up-args", _ints(self.args), "--warm-up-calls", str(self.calls),
                "--warm-up-dtype", self.weight_dtype]


def _ints(values: Sequence[int]) -> str:
    return ",".join(str(int(value)) for value in values)


def prepare_this_process_once() -> bool:
    """Make the evaluator's process non-dumpable (its memory holds what candidates must not know) and a subreaper;
    True if it is a subreaper."""
    global _subreaper_set
    with _subreaper_lock:
        if not _subreaper_set:
            set_dumpable(False)
            _subreaper_set = become_subreaper()
        return _subreaper_set


def check_worker_options(device: str, start_method: str) -> None:
    """Raise `ValueError` unless `device` and `start_method` are ones a worker can be started with."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, got {start_method!r}")


def worker_environment(marker: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The explicit, minimal environment of a worker."""
    environment = {name: value for name, value in os.environ.items()
                   if name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES)}
    environment.update(
        PYTHONPATH=_PACKAGE_ROOT,
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",  # candidates must not leave bytecode in the project
        PYTHONFAULTHANDLER="1",  # a segfault prints the Python stack to the captured stderr
    )
    environment.update(extra or {})
    environment[MARKER_VARIABLE] = marker
    return environment


class Handles:
    """What a worker is started with: its four pipes (its channel's commands in and results out, its stdout, its
    stderr) and its exchange, the shared memory its calls' inputs and outputs cross in."""

    def __init__(self, exchange_bytes: int) -> None:
        self._fds: list[int] = []
        self.exchange: exchange.Exchange | None = None
        try:
            for _ in range(4):
                self._fds.extend(os.pipe())
            self._fds.append(exchange.create(exchange_bytes))
            self.exchange = exchange.Exchange(self._fds[-1])
        except BaseException:
            self.close()
            raise
        command_read, command_write, result_read, result_write, stdout_read, stdout_write, stderr_read, \
            stderr_write, shared = self._fds
        self.theirs = {"commands": command_read, "results": result_write, "exchange": shared,
                       "stdout": stdout_write, "stderr": stderr_write}
        self.ours = (command_write, result_read, stdout_read, stderr_read)

    def close_theirs(self) -> None:
        for fd in self.theirs.values():
            os.close(fd)

    def close(self) -> None:
        """Close every descriptor and the mapping; idempotent, since by the next call these numbers may be
        another worker's."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None


def start_worker_process(start_method: str, arguments: list[str], extra_environment: Mapping[str, str] | None, cwd: str,
           limits: Limits) -> tuple[GroupLeader, Handles, str]:
    """A new worker process in its own folder `cwd` (its temporary files and caches go there), forked from the
    zygote or spawned, its handles and its marker; raises `SandboxFailure` (infra_error). A start the zygote cannot
    serve spawns its worker instead."""
    marker = secrets.token_hex(16)
    handles = Handles(limits.exchange_bytes)
    extra_environment = {**(extra_environment or {}), **{name: cwd for name in FOLDER_VARIABLES}}
    try:
        leader = None
        if start_method == "forkserver":
            environment = worker_environment(marker, extra_environment)
            server = forkserver.for_environment(environment, ignored=(MARKER_VARIABLE, *FOLDER_VARIABLES))
            try:
                leader = server.fork(arguments, environment, cwd, handles.theirs, limits.start_timeout_s)
            except forkserver.ZygoteUnavailable as error:
                if error.sent:  # a worker forked all the same holds these: it finds them closed and leaves
                    handles.close()
                    handles = Handles(limits.exchange_bytes)
                    proctree.kill_strays_later(f"{MARKER_VARIABLE}={marker}".encode(), _STRAY_WATCH_S)
                    marker = secrets.token_hex(16)
        if leader is None:
            leader = _spawn(arguments, worker_environment(marker, extra_environment), cwd, handles.theirs)
        _guarded(leader)
        return leader, handles, marker
    except BaseException:
        handles.close()
        raise


def _guarded(leader: GroupLeader) -> None:
    """Have the guard kill the worker's tree if this process dies first; if no guard can be had, kill it now and
    fail the start (infra_error)."""
    try:
        guard.watch(leader.pid)
    except OSError as error:
        leader.kill_group()
        leader.wait()
        raise SandboxFailure(Failure(Status.INFRA_ERROR, f"could not start the guard process: {error}")) from None


def _spawn(arguments: list[str], environment: dict[str, str], cwd: str,
           descriptors: dict[str, int]) -> GroupLeader:
    channels = ("commands", "results", "exchange")  # the worker's options naming them
    try:
        process = subprocess.Popen(
            [sys.executable, _SPAWNED_WORKER, *arguments, *(f"--{name}={descriptors[name]}" for name in channels)],
            stdin=subprocess.DEVNULL, stdout=descriptors["stdout"], stderr=descriptors["stderr"],
            pass_fds=[descriptors[name] for name in channels], start_new_session=True, cwd=cwd, env=environment)
    except OSError as error:
        raise SandboxFailure(Failure(Status.INFRA_ERROR, f"could not start a worker process: {error}")) from None
    return GroupLeader(process.pid, process)


def _forget_in_child() -> None:
    """The subreaper setting is not inherited by a forked child."""
    global _subreaper_set
    _subreaper_set = False


os.register_at_fork(after_in_child=_forget_in_child)
