"""Nothing an evaluator process starts outlives it, however it dies: SIGKILL while a worker's tree is stopped (as it
is while the yardstick is timed), while the zygote is stopped, after its guard was killed, while a candidate's child
runs, at several points of a real evaluation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from small_problem import SMALL_OPTIONS

from evaluator.paths import SEED_PROGRAM
from evaluator.scratch import processes_working_in

ROOT = Path(__file__).resolve().parents[1]

# Put before the seed's text: its import starts a child that ignores every signal it can and sleeps, what a
# candidate may leave behind.
LEAVES_A_CHILD = """
import os as _os, signal as _signal, time as _time
if _os.fork() == 0:
    for _number in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT):
        _signal.signal(_number, _signal.SIG_IGN)
    while True:
        _time.sleep(1)
"""

SANDBOX_EVALUATOR = """
import os, sys, time
from evaluator import scratch
from evaluator.sandbox import Limits, WorkerPool
program, stopped = sys.argv[1], sys.argv[2]
print(scratch.process_root(), flush=True)
pool = WorkerPool(Limits(), device="cpu", spares=2, start_method=sys.argv[3])
worker = pool.acquire()
worker.load(program)
assert pool.wait_for_spares(120)
if stopped == "worker":
    worker.pause()  # as the evaluator does while it times the yardstick
elif stopped in ("zygote", "guard"):  # as a candidate of the same user may, where the kernel lets it
    (pid,) = [pid for pid in scratch.processes_working_in(scratch.process_root())
              if os.readlink(f"/proc/{pid}/cwd").split(os.sep)[-1].startswith(stopped + "-")]
    os.kill(pid, 19 if stopped == "zygote" else 9)  # SIGSTOP the zygote, SIGKILL the guard
    if stopped == "guard":
        os.waitpid(pid, 0)
        pool.acquire()  # a new worker's start starts a new guard, which watches the others too
        assert pool.wait_for_spares(120)
print("ready", flush=True)
time.sleep(600)
"""


def _program(tmp_path: Path) -> Path:
    """The seed, leaving a child."""
    program = tmp_path / "leaves_a_child.py"
    program.write_text(LEAVES_A_CHILD + SEED_PROGRAM.read_text())
    return program


def _nothing_left(root: Path, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while left := processes_working_in(root):
        if time.monotonic() > deadline:
            described = [f"{pid} {_describe(pid)}" for pid in left]
            for pid in left:  # not to leave them to the next test
                with_suppressed(os.kill, pid, signal.SIGKILL)
            pytest.fail(f"left behind after the evaluator was killed: {described}")
        time.sleep(0.05)


def _describe(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return f"{process.status()} {' '.join(process.cmdline())[:80]}"
    except psutil.Error:
        return "gone"


def with_suppressed(function, *args) -> None:
    try:
        function(*args)
    except OSError:
        pass


@pytest.mark.parametrize("start_method, stopped", [("forkserver", "worker"), ("spawn", "worker"),
                                                   ("forkserver", "zygote"), ("forkserver", "guard"),
                                                   ("forkserver", "nothing")])
def test_nothing_outlives_an_evaluator_killed(tmp_path, start_method, stopped):
    evaluator = subprocess.Popen([sys.executable, "-c", SANDBOX_EVALUATOR, str(_program(tmp_path)), stopped,
                                  start_method], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        root = Path(evaluator.stdout.readline().strip())
        assert evaluator.stdout.readline().strip() == "ready"
        workers = [pid for pid in processes_working_in(root)
                   if os.readlink(f"/proc/{pid}/cwd").split(os.sep)[-1].startswith("worker-")]
        assert len(workers) >= 4, "the worker, its child and two spares"
    finally:
        evaluator.kill()
        evaluator.wait()
    _nothing_left(root)


def _stages(root: Path) -> tuple[bool, set[str]]:
    """What of an evaluation is under way, from the processes working in its root: whether a zygote runs, and the
    folders of the candidate's processes that have a child running."""
    zygote, parents = False, set()
    for pid in processes_working_in(root):
        try:
            folder = os.readlink(f"/proc/{pid}/cwd").split(os.sep)[-1]
            parent_folder = os.readlink(f"/proc/{psutil.Process(pid).ppid()}/cwd").split(os.sep)[-1]
        except (OSError, psutil.Error):
            continue
        zygote = zygote or folder.startswith("zygote-")
        if folder.startswith("worker-") and parent_folder == folder:
            parents.add(folder)
    return zygote, parents


@pytest.mark.parametrize("stage", ["zygote", "the candidate's first process", "the recheck's process"])
def test_nothing_outlives_an_evaluation_killed_midway(tmp_path, stage):
    """The real command, killed once the stage is under way: the zygote started, the candidate's first process
    running (its child too), the recheck's process running (a second one with a child, after the timed batches)."""
    evaluator = subprocess.Popen(
        [sys.executable, "-m", "evaluator", "evaluate", str(_program(tmp_path)), "--device", "cpu", *SMALL_OPTIONS],
        cwd=tmp_path, env={**os.environ, "EPLB_EVALUATOR_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, candidates = None, set()
    try:
        deadline = time.monotonic() + 300
        while True:
            assert evaluator.poll() is None, f"the evaluation ended before {stage}"
            assert time.monotonic() < deadline, f"{stage} never came"
            if root is None:
                root = next(Path(tempfile.gettempdir()).glob(f"eplb-scratch-{evaluator.pid}-*"), None)
                continue
            zygote, with_a_child = _stages(root)
            candidates |= with_a_child
            if {"zygote": zygote, "the candidate's first process": len(candidates) >= 1,
                    "the recheck's process": len(candidates) >= 2}[stage]:
                break
            time.sleep(0.002)
    finally:
        evaluator.kill()
        evaluator.wait()
    assert root is not None
    _nothing_left(root)
