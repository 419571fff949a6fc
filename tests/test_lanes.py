"""Device lanes: the file lock that makes evaluators in separate processes take turns, and what a forked child
or a candidate that tampers with the lock folder can do to it."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import time
from pathlib import Path

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator
from evaluator.evaluation.lanes import Lanes
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import FailureKind, Limits, SandboxFailure


@pytest.fixture
def lanes(tmp_path):
    """One CPU lane, no spare workers, locking through a file in `tmp_path/locks`."""
    lanes = Lanes(Limits(), "cpu", 0, None, tmp_path / "locks")
    yield lanes
    lanes.close()


def locked_elsewhere(path: Path) -> bool:
    """Whether another open file description holds the lock of `path` (as another process's would)."""
    with open(path, "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def test_a_held_lane_is_locked_for_other_processes_until_released(lanes):
    holding = lanes.take()
    assert locked_elsewhere(holding.lane.lock_path)
    holding.release()
    holding.release()  # a second release changes nothing
    assert not locked_elsewhere(holding.lane.lock_path)


def test_a_forked_child_does_not_keep_its_parents_lane_locked(lanes):
    holding = lanes.take()
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:  # a loop's pool worker, forked while the parent evaluated, living on
        os.write(writable, b"started")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(readable, 7)
        holding.release()
        assert not locked_elsewhere(holding.lane.lock_path)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(readable)
        os.close(writable)


def test_a_removed_lock_folder_is_made_again(lanes, tmp_path):
    lanes.take().release()
    (tmp_path / "locks" / "cpu.lock").unlink()
    (tmp_path / "locks").rmdir()
    holding = lanes.take()
    assert locked_elsewhere(tmp_path / "locks" / "cpu.lock")
    holding.release()


def test_a_lock_file_replaced_by_a_link_is_not_followed(lanes, tmp_path):
    (tmp_path / "locks").mkdir()
    os.mkfifo(tmp_path / "fifo")  # opening it to write would block forever
    (tmp_path / "locks" / "cpu.lock").symlink_to(tmp_path / "fifo")
    with pytest.raises(SandboxFailure) as raised:
        lanes.take()
    assert raised.value.failure.kind is FailureKind.INFRA_ERROR
    assert "cpu.lock" in raised.value.failure.message and "EPLB_EVALUATOR_CACHE" in raised.value.failure.message
    (tmp_path / "locks" / "cpu.lock").unlink()
    lanes.take().release()  # the lane was given back


def test_an_unusable_lock_folder_is_an_infra_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    lanes = Lanes(Limits(), "cpu", 0, None, tmp_path / "file" / "locks")
    with pytest.raises(SandboxFailure) as raised:
        lanes.take()
    assert raised.value.failure.kind is FailureKind.INFRA_ERROR
    lanes.close()


def test_a_forked_child_dropping_its_copy_of_an_evaluator_leaves_the_parents_working():
    evaluator = Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1)
    try:
        child = os.fork()
        if child == 0:  # a loop's pool worker that drops the evaluator it inherited, and exits
            del evaluator
            gc.collect()
            os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        # the workers started from now on run the warm-up program the child's copy was collected with
        result = evaluator.evaluate(SEED_PROGRAM)
    finally:
        evaluator.close()
    assert result.status == "ok", result.error


def test_the_lane_is_free_again_only_once_every_process_of_a_candidate_is_gone(tmp_path):
    pids = tmp_path / "pids"
    program = tmp_path / "program.py"
    # memory of its own, which takes the system a while to take back when the process is killed
    program.write_text(f"import os\nexec(open({str(SEED_PROGRAM)!r}).read())\nHELD = bytearray(600 << 20)\n"
                       f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n")
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1) as evaluator:
        assert evaluator.evaluate(SEED_PROGRAM).status == "ok"  # the seed's timing, on this lane, comes first
        assert evaluator.evaluate(program).status == "ok"
        holding = evaluator.lanes.take()
        started = {int(pid) for pid in pids.read_text().split()}
        assert len(started) == 2  # the candidate's process and its recheck's
        assert not any(Path(f"/proc/{pid}").exists() for pid in started)
        holding.release()


def test_an_unusable_cache_folder_makes_every_evaluation_an_infra_error(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path / "cache"))
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1) as evaluator:
        result = evaluator.evaluate(SEED_PROGRAM)
    assert result.status == "infra_error" and "EPLB_EVALUATOR_CACHE" in result.error
