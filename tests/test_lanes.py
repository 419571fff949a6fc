"""Device lanes: the lock that makes evaluators in separate processes take turns, and what a forked child, a
dead holder or a candidate can do to it."""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator
from evaluator.evaluation.lanes import Lanes
from evaluator.evaluation.timing import SeedTimingCache, default_cache_path
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import FailureKind, Limits, SandboxFailure


@pytest.fixture
def lanes(tmp_path):
    """One CPU lane, no spare workers, in a lock scope of its own."""
    lanes = Lanes(Limits(), "cpu", 0, None, str(tmp_path))
    yield lanes
    lanes.close()


def held_elsewhere(address: str) -> bool:
    """Whether some socket holds `address`, as another process trying to take the lane would find."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(address)
    except OSError as error:
        assert error.errno == errno.EADDRINUSE
        return True
    finally:
        probe.close()
    return False


def test_a_held_lane_is_locked_for_other_processes_until_released(lanes):
    holding = lanes.take()
    assert held_elsewhere(holding.lane.lock_address)
    holding.release()
    holding.release()  # a second release changes nothing
    assert not held_elsewhere(holding.lane.lock_address)


def test_evaluators_with_another_cache_folder_do_not_share_the_lock(lanes, tmp_path):
    other = Lanes(Limits(), "cpu", 0, None, str(tmp_path / "elsewhere"))
    assert other.lanes[0].lock_address != lanes.lanes[0].lock_address
    holding = lanes.take()
    other.take(give_up_at=time.monotonic() + 5).release()  # not kept waiting
    holding.release()
    other.close()


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
        assert not held_elsewhere(holding.lane.lock_address)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(readable)
        os.close(writable)


def test_a_lane_whose_holder_died_is_free_at_once(lanes, tmp_path):
    address = lanes.lanes[0].lock_address
    holder = subprocess.Popen([sys.executable, "-c", f"""
import socket, sys, time
lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lock.bind({address!r})
print("holding", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SandboxFailure) as raised:
            lanes.take(give_up_at=time.monotonic() + 0.3)  # another process holds it
        assert raised.value.failure.kind is FailureKind.INFRA_ERROR and "gave up" in raised.value.failure.message
    finally:
        holder.kill()
        holder.wait()
    lanes.take(give_up_at=time.monotonic() + 5).release()  # the kernel let go of the dead holder's lock


def test_a_process_that_takes_the_lane_again_and_again_lets_a_waiting_one_have_it(lanes, tmp_path):
    greedy = subprocess.Popen([sys.executable, "-c", f"""
import time
from evaluator.evaluation.lanes import Lanes
from evaluator.sandbox import Limits
lanes = Lanes(Limits(), "cpu", 0, None, {str(tmp_path)!r})
print("taking turns", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    holding = lanes.take()
    time.sleep(0.05)
    holding.release()
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert greedy.stdout.readline().strip() == "taking turns"
        for _ in range(3):
            lanes.take(give_up_at=time.monotonic() + 5).release()
    finally:
        greedy.kill()
        greedy.wait()


def test_waiting_for_a_lane_held_in_this_process_gives_up_at_the_deadline(lanes):
    holding = lanes.take()
    started = time.monotonic()
    with pytest.raises(SandboxFailure):
        lanes.take(give_up_at=started + 0.2)
    assert time.monotonic() - started < 5
    holding.release()
    lanes.take(give_up_at=time.monotonic() + 1).release()


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
    # unconfined, so that each process can write its pid here: the lane's release does not rely on confinement
    settings = dataclasses.replace(SMALL_SETTINGS, limits=dataclasses.replace(SMALL_SETTINGS.limits, confined=False))
    with Evaluator(SMALL_TRACE, settings, device="cpu", spares=1) as evaluator:
        assert evaluator.evaluate(SEED_PROGRAM).status == "ok"  # the seed's timing, on this lane, comes first
        assert evaluator.evaluate(program).status == "ok"
        holding = evaluator.lanes.take()
        started = {int(pid) for pid in pids.read_text().split()}
        assert len(started) == 2  # the candidate's process and its recheck's
        assert not any(Path(f"/proc/{pid}").exists() for pid in started)
        holding.release()


def test_an_unusable_cache_folder_only_costs_the_seeds_cached_time(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path / "cache"))
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1,
                   seed_timings=SeedTimingCache(default_cache_path())) as evaluator:
        result = evaluator.evaluate(SEED_PROGRAM)
    assert result.status == "ok", result.error
    assert (tmp_path / "cache").read_text() == "a file where the cache folder should be"


def test_an_evaluation_that_gets_no_device_by_its_deadline_is_an_infra_error(small):
    holding = small.lanes.take()
    try:
        started = time.monotonic()
        result = small.evaluate(SEED_PROGRAM, give_up_at=started + 0.5)
        assert time.monotonic() - started < 10
    finally:
        holding.release()
    assert result.status == "infra_error" and "gave up waiting" in result.error
    assert small.evaluate(SEED_PROGRAM, give_up_at=time.monotonic() + 60).status == "ok"
