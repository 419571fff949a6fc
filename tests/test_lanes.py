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
import threading
import time
from pathlib import Path

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator
from evaluator.evaluation.lanes import Lanes, lane_cores
from evaluator.evaluation.timing import ReferenceCache, default_cache_path
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import Limits, SandboxFailure
from evaluator.status import Status


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


def held_in_another_process(address: str, seconds: float = 60, listening: bool = True) -> subprocess.Popen[str]:
    """A process holding the lock at `address` for `seconds` (listening, as an evaluator's lock does, or only bound),
    once this returns."""
    holder = subprocess.Popen([sys.executable, "-c", f"""
import socket, time
lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lock.bind({address!r})
if {listening!r}:
    lock.listen(128)
print("holding", flush=True)
time.sleep({seconds!r})
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_held_lane_is_locked_for_other_processes_until_released(lanes):
    holding = lanes.take()
    assert held_elsewhere(holding.lane.lock_address)
    holding.release()
    holding.release()  # a second release changes nothing
    assert not held_elsewhere(holding.lane.lock_address)


def test_lanes_given_a_scope_of_their_own_do_not_share_the_lock(lanes, tmp_path):
    other = Lanes(Limits(), "cpu", 0, None, str(tmp_path / "elsewhere"))
    assert other.lanes[0].lock_address != lanes.lanes[0].lock_address
    holding = lanes.take()
    other.take(give_up_at=time.monotonic() + 5).release()  # not kept waiting
    holding.release()
    other.close()


def test_evaluators_with_other_cache_folders_take_turns_on_a_device(tmp_path, monkeypatch):
    """Two candidates timed on one device at once would each be timed at the other's expense, whatever folder each
    evaluator keeps its seed references in."""
    monkeypatch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path / "one"))
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=0) as first:
        monkeypatch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path / "other"))
        with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=0) as second:
            assert first.lanes.lanes[0].lock_address == second.lanes.lanes[0].lock_address
            holding = first.lanes.take()
            try:
                result = second.evaluate(SEED_PROGRAM, give_up_at=time.monotonic() + 0.5)
            finally:
                holding.release()
    assert result.status == "infra_error" and "gave up waiting" in result.error


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
    holder = held_in_another_process(address, listening=False)
    try:
        with pytest.raises(SandboxFailure) as raised:
            lanes.take(give_up_at=time.monotonic() + 0.3)  # another process holds it
        assert raised.value.failure.kind is Status.INFRA_ERROR and "gave up" in raised.value.failure.message
    finally:
        holder.kill()
        holder.wait()
    lanes.take(give_up_at=time.monotonic() + 5).release()  # the kernel let go of the dead holder's lock


def test_a_lane_another_process_holds_is_passed_over_for_a_free_one(tmp_path, monkeypatch):
    """Evaluators in several processes on a machine of several GPUs spread over them rather than queue on one."""
    monkeypatch.setattr("evaluator.evaluation.lanes._devices",
                        lambda device, gpus: [(name, "cpu", "a CPU", {}) for name in ("first", "second")])
    two = Lanes(Limits(), "cpu", 0, None, str(tmp_path))
    holder = held_in_another_process(two.lanes[0].lock_address)
    try:
        holding = two.take(give_up_at=time.monotonic() + 5)
        assert holding.lane.name == "second"
        with pytest.raises(SandboxFailure):  # the other is held elsewhere, this one here
            two.take(give_up_at=time.monotonic() + 0.3)
        holder.kill()
        holder.wait()
        assert two.take(give_up_at=time.monotonic() + 5).lane.name == "first"  # freed by the kernel: taken
        holding.release()
    finally:
        holder.kill()
        holder.wait()
        two.close()


def test_waiting_long_for_a_lane_another_process_holds_costs_no_cpu(lanes):
    """A waiter sleeps on the holder's socket: it neither polls nor fills the socket's queue (128 connections, after
    which a connection fails at once) with connections it gave up on."""
    holder = held_in_another_process(lanes.lanes[0].lock_address, seconds=15)
    try:
        cpu_before = time.process_time()
        lanes.take(give_up_at=time.monotonic() + 60).release()  # the holder's exit frees it after 15 s
        assert time.process_time() - cpu_before < 1.0
    finally:
        holder.kill()
        holder.wait()


def test_a_process_that_takes_the_lane_again_and_again_lets_a_waiting_one_have_it(lanes, tmp_path):
    greedy = subprocess.Popen([sys.executable, "-c", f"""
import time
from evaluator.evaluation.lanes import Lanes, lane_cores
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


def sharing_cores(lane):
    """`lane` as a machine with too few cores for a lane of its own has it: its exits run where its candidates do."""
    return dataclasses.replace(lane, cpus=None)


def settled_in_background(lanes: Lanes, lane) -> threading.Thread:
    settling = threading.Thread(target=lanes.settle, args=(lane,), daemon=True)
    settling.start()
    return settling


def test_a_lane_whose_processes_are_exiting_goes_to_the_next_thread_which_settles_once_they_are_gone(lanes):
    gone = threading.Event()
    holding = lanes.take()
    holding.release(wait_gone=gone.wait)
    following = lanes.take(give_up_at=time.monotonic() + 1)  # at once, the lock handed over
    assert held_elsewhere(following.lane.lock_address)
    settling = settled_in_background(lanes, sharing_cores(following.lane))
    settling.join(0.2)
    assert settling.is_alive()  # nothing may be timed yet
    gone.set()
    settling.join(5)
    assert not settling.is_alive()
    following.release()
    assert not held_elsewhere(following.lane.lock_address)


def test_on_an_isolated_lane_the_next_thread_is_timed_while_the_last_processes_still_exit(lanes):
    """They were moved onto the evaluator's cores before they were killed: their exits slow nothing on the lane's."""
    gone = threading.Event()
    holding = lanes.take()
    holding.release(wait_gone=gone.wait)
    following = lanes.take(give_up_at=time.monotonic() + 1)
    isolated = dataclasses.replace(following.lane, cpus=(min(os.sched_getaffinity(0)),))
    settling = settled_in_background(lanes, isolated)
    settling.join(5)
    assert not settling.is_alive()
    assert held_elsewhere(following.lane.lock_address)  # other processes still wait for the exits
    gone.set()
    following.release()


def test_a_lane_nobody_takes_is_unlocked_for_other_processes_once_its_processes_are_gone(lanes):
    gone = threading.Event()
    holding = lanes.take()
    holding.release(wait_gone=gone.wait)
    assert held_elsewhere(holding.lane.lock_address)
    gone.set()
    give_up = time.monotonic() + 5
    while held_elsewhere(holding.lane.lock_address) and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not held_elsewhere(holding.lane.lock_address)
    following = lanes.take(give_up_at=time.monotonic() + 1)
    lanes.settle(following.lane)  # returns at once: they are gone
    following.release()


def test_a_process_waiting_for_the_lane_gets_it_before_this_one_once_the_processes_are_gone(lanes, tmp_path):
    holding = lanes.take()
    waiting = subprocess.Popen([sys.executable, "-c", f"""
from evaluator.evaluation.lanes import Lanes
from evaluator.sandbox import Limits
lanes = Lanes(Limits(), "cpu", 0, None, {str(tmp_path)!r})
print("waiting", flush=True)
holding = lanes.take()
print("took it", flush=True)
input()
holding.release()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # connected to the lock by now
        gone = threading.Event()
        holding.release(wait_gone=gone.wait)
        with pytest.raises(SandboxFailure):  # not handed to this process while another waits
            lanes.take(give_up_at=time.monotonic() + 0.3)
        gone.set()
        assert waiting.stdout.readline().strip() == "took it"
        waiting.stdin.write("\n")
        waiting.stdin.flush()
        lanes.take(give_up_at=time.monotonic() + 10).release()
    finally:
        waiting.kill()
        waiting.wait()


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


def test_the_lane_settles_only_once_every_process_of_the_last_candidate_is_gone(tmp_path):
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
        evaluator.lanes.settle(sharing_cores(holding.lane))
        started = {int(pid) for pid in pids.read_text().split()}
        assert len(started) == 2  # the candidate's process and its recheck's
        assert not any(Path(f"/proc/{pid}").exists() for pid in started)
        holding.release()


def test_an_unusable_cache_folder_only_costs_the_seeds_cached_reference(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path / "cache"))
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1,
                   seed_references=ReferenceCache(default_cache_path())) as evaluator:
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


# ---- cores ----------------------------------------------------------------------------------------------


def test_each_lane_gets_a_core_of_its_own_and_the_evaluator_the_rest():
    single = [(cpu,) for cpu in range(16)]
    (one,), evaluator = lane_cores(1, single)
    assert one == (15,) and evaluator == list(range(15))
    two, evaluator = lane_cores(2, single)
    assert two == [(15,), (14,)] and evaluator == list(range(14))


def test_a_lanes_core_keeps_its_other_hardware_threads_idle():
    paired = [(cpu, cpu + 8) for cpu in range(8)]  # the kernel numbers siblings eight apart
    (one,), evaluator = lane_cores(1, paired)
    assert one == (7,) and 15 not in evaluator and sorted(evaluator) == [*range(7), *range(8, 15)]


def test_a_machine_of_few_cores_gives_lanes_none():
    assert lane_cores(1, [(0,), (1,)]) == ([None], None)
    assert lane_cores(2, [(cpu,) for cpu in range(4)]) == ([None, None], None)


def test_a_candidate_runs_on_its_lanes_core_and_the_evaluator_elsewhere_while_it_is_open(tmp_path, monkeypatch):
    monkeypatch.setattr("evaluator.evaluation.lanes.physical_cores", lambda cpus: [(cpu,) for cpu in sorted(cpus)])
    monkeypatch.setattr("evaluator.evaluation.lanes.MIN_EVALUATOR_CORES", 1)
    before = os.sched_getaffinity(0)
    program = tmp_path / "where.py"
    program.write_text(f"import os, importlib.util\n"
                       f"_spec = importlib.util.spec_from_file_location('seed', {str(SEED_PROGRAM)!r})\n"
                       "seed = importlib.util.module_from_spec(_spec)\n_spec.loader.exec_module(seed)\n"
                       "def rebalance_experts(weight, *args):\n"
                       "    print('cpus', sorted(os.sched_getaffinity(0)), flush=True)\n"
                       "    return seed.rebalance_experts(weight, *args)\n")
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1) as evaluator:
        [lane] = evaluator.lanes.lanes
        assert lane.isolated and lane.cpus == (max(before),)
        assert os.sched_getaffinity(0) == before - {max(before)}
        result = evaluator.evaluate(program)
    assert result.status == "ok", result.error
    assert {line for line in result.stdout.splitlines() if line.startswith("cpus")} == {f"cpus [{max(before)}]"}
    assert os.sched_getaffinity(0) == before
