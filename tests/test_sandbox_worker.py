"""Worker processes against real programs: the seed, and one hostile program per behaviour.

Every test runs real subprocesses, signals and pipes. The shared pool keeps workers started
ahead, so torch is imported while earlier tests run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import secrets
import signal
import socket
import stat
import subprocess
import tempfile
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from evaluator.eplb.problem import Problem
from evaluator.sandbox import process as process_module, proctree
from evaluator.sandbox import Limits, SandboxFailure, Unsupported, WarmUp, Worker, WorkerPool
from evaluator.status import Status

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).resolve().parent / "hostile"
SEED = ROOT / "seeds" / "eplb.py"
SMALL = Problem(num_layers=4, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2, num_gpus=8)
LIMITS = Limits(timeout_s=30, import_timeout_s=30, memory_mb=1024)
UNCONFINED = dataclasses.replace(LIMITS, confined=False)
SHORT_S = 3.0  # the time limit given to programs that hang
PR_GET_DUMPABLE = 3
ZYGOTE_ROOM = b"EPLB_SANDBOX_ENVIRONMENT_ROOM="  # in the environment of a zygote, the process workers are forked from

sys.path.insert(0, str(ROOT / "seeds"))
import eplb  # noqa: E402  (the seed, run in-process as the reference)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(LIMITS, device="cpu", spares=2) as workers:
        yield workers


@pytest.fixture(scope="module")
def unconfined_pool():
    """Workers that may write anywhere and signal anything, as on a kernel without Landlock: for what must hold
    without the confinement (the tree's kill, the zygote's recovery), and for programs that write their pids."""
    with WorkerPool(UNCONFINED, device="cpu", spares=1) as workers:
        yield workers


def weight_for(problem: Problem, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(size=(problem.num_layers, problem.num_experts)).astype(np.float32)


def seed_plan(weight: np.ndarray, problem: Problem) -> tuple[np.ndarray, ...]:
    return tuple(t.numpy() for t in eplb.rebalance_experts(torch.from_numpy(weight.copy()), *problem.rebalance_args()))


def run(pool: WorkerPool, program: Path, problem: Problem = SMALL, timeout_s: float | None = None,
        import_timeout_s: float | None = None):
    """Load `program` in a fresh worker and call it once; return (CallResult or Failure, worker)."""
    worker = pool.acquire()
    try:
        worker.load(program, timeout_s=import_timeout_s)
        return worker.call(weight_for(problem), problem.rebalance_args(), timeout_s=timeout_s), worker
    except SandboxFailure as failure:
        return failure.failure, worker
    finally:
        worker.close()


def marker_of(worker: Worker) -> bytes:
    with open(f"/proc/{worker.pid}/environ", "rb") as file:
        return next(entry for entry in file.read().split(b"\0") if entry.startswith(b"EPLB_SANDBOX_WORKER="))


def processes_with(marker: bytes) -> list[int]:
    """Every process on the machine but the zygotes started with `marker` in its environment (zombies excluded)."""
    found = []
    for process in psutil.process_iter():
        try:
            environment = open(f"/proc/{process.pid}/environ", "rb").read().split(b"\0")
            if (process.status() != psutil.STATUS_ZOMBIE and marker in environment
                    and not any(entry.startswith(ZYGOTE_ROOM) for entry in environment)):
                found.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_watching_tree(pool: WorkerPool, program: Path, timeout_s: float | None = None):
    """Like `run`, and also return every live process still carrying the worker's marker afterwards."""
    worker = pool.acquire()
    marker = marker_of(worker)
    try:
        worker.load(program)
        outcome = worker.call(weight_for(SMALL), SMALL.rebalance_args(), timeout_s=timeout_s)
    except SandboxFailure as failure:
        outcome = failure.failure
    finally:
        worker.close()
    return outcome, processes_with(marker)


def pid_from(path: Path, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return int(path.read_text())


def copy_hostile(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copy(HOSTILE / name, tmp_path / name))


# ---- normal programs --------------------------------------------------------------------------


def test_the_seed_returns_what_it_returns_in_process(pool):
    problem = Problem()
    weight = weight_for(problem, seed=3)
    with pool.launch(SEED) as worker:
        first = worker.call(weight, problem.rebalance_args())
        batch = worker.batch([weight_for(problem, seed=4)], problem.rebalance_args())
        second = batch.calls[0]
    assert worker.info.device == "cpu" and worker.info.torch_version == torch.__version__
    assert first.returned_type == "tuple" and first.returned_length == 3
    for received, expected in zip(first.outputs, seed_plan(weight, problem)):
        assert isinstance(received, np.ndarray) and received.dtype == np.int64
        np.testing.assert_array_equal(received, expected)
    assert not np.array_equal(first.outputs[0], second.outputs[0])
    assert (first.call_index, second.call_index) == (1, 2)
    assert first.output_devices == ("cpu", "cpu", "cpu")
    assert not first.input_mutated and first.shares_memory_with is None
    assert 0 < batch.claim_ns <= batch.round_trip_ns


def test_the_pool_hands_out_workers_that_were_ready_before_the_program_was_sent(pool):
    assert pool.wait_for_spares()
    worker = pool.acquire()
    with worker:
        assert worker.is_ready()
        before_load = time.monotonic()
        worker.load(SEED)
        assert worker.info.ready_monotonic < before_load


def test_one_program_per_worker(pool):
    with pool.launch(SEED) as worker:
        with pytest.raises(RuntimeError, match="loaded, not ready"):
            worker.load(SEED)


def test_a_missing_program_file_is_the_callers_error(pool, tmp_path):
    with pool.acquire() as worker:
        with pytest.raises(FileNotFoundError, match="nothing.py"):
            worker.load(tmp_path / "nothing.py")


def test_concurrent_candidates_share_one_pool(pool):
    weight = weight_for(SMALL, seed=9)
    results, errors = [], []

    def evaluate() -> None:
        try:
            with pool.launch(SEED) as worker:
                results.append(worker.call(weight, SMALL.rebalance_args()))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=evaluate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 3
    expected = seed_plan(weight, SMALL)
    for result in results:
        np.testing.assert_array_equal(result.outputs[1], expected[1])


def test_the_worker_sees_none_of_the_evaluators_secrets(monkeypatch):
    monkeypatch.setenv("EPLB_HELD_OUT_TRACE_SEED", "271828")
    with Worker.start(LIMITS, device="cpu") as worker:
        worker.load(HOSTILE / "prints_environment.py")
        stdout, _ = worker.output()
    assert "EPLB_HELD_OUT_TRACE_SEED" not in stdout.text() and "271828" not in stdout.text()
    assert '"PATH"' in stdout.text()


def test_a_closed_pool_hands_out_nothing_and_says_it_is_not_the_candidates_fault():
    pool = WorkerPool(LIMITS, device="cpu", spares=0)
    pool.close()
    with pytest.raises(SandboxFailure) as raised:
        pool.acquire()
    assert raised.value.failure.kind is Status.INFRA_ERROR and "closed" in raised.value.failure.message


def test_a_warm_up_runs_before_the_worker_is_ready_and_leaves_no_trace_for_the_candidate(tmp_path):
    warm_up = tmp_path / "warm_up.py"
    warm_up.write_text("import sys\n"
                       "def rebalance_experts(weight, *args):\n    print('warm-up call', file=sys.stderr)\n")
    looks_around = tmp_path / "looks_around.py"
    looks_around.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "seeds")!r})
        import eplb

        def rebalance_experts(weight, *args):
            if "eplb_warm_up" in sys.modules or "rebalance_experts" in vars(sys.modules["__main__"]):
                raise RuntimeError("the warm-up program is reachable")
            return eplb.rebalance_experts(weight, *args)
    """))
    setup = WarmUp(warm_up, (SMALL.num_layers, SMALL.num_experts), SMALL.rebalance_args(), calls=3)
    with Worker.start(LIMITS, device="cpu", warm_up=setup) as worker:
        assert worker.output()[1].text().splitlines() == ["warm-up call"] * 3
        worker.load(looks_around)
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert all(np.array_equal(a, b) for a, b in zip(result.outputs, seed_plan(weight_for(SMALL), SMALL)))


def test_a_warm_up_that_fails_is_an_infra_error(tmp_path):
    warm_up = tmp_path / "warm_up.py"
    warm_up.write_text("def rebalance_experts(weight, *args):\n    raise ValueError('broken warm-up')\n")
    setup = WarmUp(warm_up, (SMALL.num_layers, SMALL.num_experts), SMALL.rebalance_args())
    with pytest.raises(SandboxFailure) as raised:
        Worker.start(LIMITS, device="cpu", warm_up=setup)
    assert raised.value.failure.kind is Status.INFRA_ERROR
    assert "warm-up failed" in raised.value.failure.message and "broken warm-up" in raised.value.failure.message


def test_a_spare_that_fails_while_a_candidate_waits_costs_that_candidate_nothing(tmp_path):
    """As when a spare's warm-up finds the GPU full while another program holds it: the first start fails, slowly,
    after a candidate began to wait; the candidate gets a worker of a later start."""
    claimed = tmp_path / "claimed"
    warm_up = tmp_path / "warm_up.py"
    warm_up.write_text(textwrap.dedent(f"""
        import os, time
        try:
            os.close(os.open({str(claimed)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            time.sleep(2)  # a later start: ready well after the first failed
        else:
            time.sleep(0.5)
            raise MemoryError("the first start fails")

        def rebalance_experts(weight, *args):
            return weight
    """))
    setup = WarmUp(warm_up, (SMALL.num_layers, SMALL.num_experts), SMALL.rebalance_args(), calls=1)
    with WorkerPool(UNCONFINED, device="cpu", spares=1, warm_up=setup) as spare_pool:
        deadline = time.monotonic() + 60
        while not claimed.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert claimed.exists()
        with spare_pool.launch(SEED) as worker:
            result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
    np.testing.assert_array_equal(result.outputs[0], seed_plan(weight_for(SMALL), SMALL)[0])


def test_asking_for_cuda_without_a_gpu_is_an_infra_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SandboxFailure) as raised:
        Worker.start(LIMITS, device="cuda")
    assert raised.value.failure.kind is Status.INFRA_ERROR
    assert "torch.cuda.is_available() is False" in raised.value.failure.message


# ---- hostile programs: each ends in the right failure -----------------------------------------


def test_a_hang_in_the_call_times_out(pool):
    failure, worker = run(pool, HOSTILE / "hang_in_call.py", timeout_s=SHORT_S)
    assert failure.kind is Status.TIMEOUT
    assert "call 1 of rebalance_experts did not finish within 3 s" in failure.message
    assert not psutil.pid_exists(worker.pid)


def test_a_hang_at_import_times_out(pool):
    failure, worker = run(pool, HOSTILE / "hang_at_import.py", import_timeout_s=SHORT_S)
    assert failure.kind is Status.TIMEOUT
    assert "the import of hang_at_import.py did not finish within 3 s" in failure.message
    assert not psutil.pid_exists(worker.pid)


def test_a_segfault_is_a_crash_with_the_signal_and_the_python_stack(pool):
    failure, _ = run(pool, HOSTILE / "segfault.py")
    assert failure.kind is Status.CRASH
    assert failure.signal == "SIGSEGV"
    assert "SIGSEGV" in failure.message
    assert "segfault.py" in failure.stderr.text()  # faulthandler's stack names the program's line
    assert "about to crash" in failure.stdout.text()


def test_exiting_with_code_0_instead_of_returning_is_a_crash(pool):
    failure, _ = run(pool, HOSTILE / "os_exit_in_call.py")
    assert failure.kind is Status.CRASH
    assert failure.exit_code == 0
    assert "exited with code 0 during call 1 of rebalance_experts, before returning a result" in failure.message


def test_sys_exit_at_import_is_an_import_error(pool):
    failure, _ = run(pool, HOSTILE / "sys_exit_at_import.py")
    assert failure.kind is Status.IMPORT_ERROR
    assert "sys.exit(0)" in failure.message


def test_a_syntax_error_is_an_import_error_naming_the_line(pool, tmp_path):
    program = tmp_path / "broken.py"
    program.write_text("def rebalance_experts(weight:\n    return weight\n")
    failure, _ = run(pool, program)
    assert failure.kind is Status.IMPORT_ERROR
    assert "SyntaxError" in failure.message and "broken.py" in failure.message


def test_an_exception_carries_the_programs_traceback(pool):
    failure, _ = run(pool, HOSTILE / "raises.py")
    assert failure.kind is Status.EXCEPTION
    assert failure.message.startswith("rebalance_experts raised ValueError:")
    assert "ValueError: no plan for these layers" in failure.message
    assert "in plan_layers" in failure.message and "raises.py" in failure.message
    assert "evaluator/sandbox" not in failure.message  # only the program's own frames


def test_a_missing_entry_point_lists_what_the_program_defines(pool):
    failure, _ = run(pool, HOSTILE / "missing_entry_point.py")
    assert failure.kind is Status.MISSING_FUNCTION
    assert "`rebalance_experts`" in failure.message and "rebalance" in failure.message.split(":")[-1]


def test_an_entry_point_that_is_not_a_function_is_missing(pool):
    failure, _ = run(pool, HOSTILE / "entry_point_not_callable.py")
    assert failure.kind is Status.MISSING_FUNCTION
    assert "is a int, not a function" in failure.message


def test_a_100_mb_stdout_flood_is_capped_and_costs_the_evaluator_no_memory(pool):
    evaluator = psutil.Process()
    resident_before = evaluator.memory_info().rss
    worker = pool.acquire()
    with worker:
        worker.load(HOSTILE / "stdout_flood.py")
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
        worker.close()
        stdout, _ = worker.output()
    assert evaluator.memory_info().rss - resident_before < 50 * 1024 * 1024
    assert stdout.total_bytes == 100 * 1024 * 1024
    assert len(stdout.head) + len(stdout.tail) <= LIMITS.output_bytes
    for received, expected in zip(result.outputs, seed_plan(weight_for(SMALL), SMALL)):
        np.testing.assert_array_equal(received, expected)


def test_a_fake_result_on_stdout_is_only_output(pool):
    worker = pool.acquire()
    with worker:
        worker.load(HOSTILE / "fake_result.py")
        batch = worker.batch([weight_for(SMALL)], SMALL.rebalance_args())
        stdout, stderr = worker.output()
    [result] = batch.calls
    assert result.returned_type == "NoneType" and result.returned_length is None
    assert result.outputs == (Unsupported("NoneType", ""),)
    assert batch.claim_ns > 1
    assert '"op": "batch_result"' in stdout.text() and "EPLB" in stderr.text()


DAEMONISES = """
import os, time

PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pid")

def rebalance_experts(weight, *args):
    # the classic daemon (fork, setsid, fork) without an exec: in the worker's own memory, its environment
    # block included; it writes its pid to `pid` beside this file
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(PID_FILE + ".tmp", "w") as file:
                file.write(str(os.getpid()))
            os.rename(PID_FILE + ".tmp", PID_FILE)
            time.sleep(3600)
        os._exit(0)
    while not os.path.exists(PID_FILE):
        time.sleep(0.01)
    {ending}
"""


def daemonising_program(tmp_path: Path, ending: str) -> Path:
    """A program whose call leaves a daemon behind, then runs `ending`."""
    program = tmp_path / "daemonises.py"
    program.write_text(DAEMONISES.format(ending=ending))
    return program


# a grandchild in a new session, exec'd (with the worker's environment) or forked (in the worker's memory)
@pytest.mark.parametrize("program", [
    lambda tmp_path: copy_hostile("orphan_new_session.py", tmp_path),
    lambda tmp_path: daemonising_program(tmp_path, ending="os._exit(0)"),
], ids=["execd", "forked"])
def test_an_orphan_is_gone_after_the_worker_dies(unconfined_pool, tmp_path, program):
    failure, worker = run(unconfined_pool, program(tmp_path))
    assert failure.kind is Status.CRASH and failure.exit_code == 0
    orphan = pid_from(tmp_path / "pid")
    assert orphan != worker.pid
    assert not psutil.pid_exists(orphan)


def test_a_child_that_erased_its_marker_is_gone_after_the_worker_dies(pool):
    """Nothing in its environment or its parent marks the orphan as the worker's; it cannot leave the worker's
    process group, which is killed whole."""
    failure, worker = run(pool, HOSTILE / "erases_its_marker.py")
    assert failure.kind is Status.CRASH and failure.exit_code == 0
    assert worker.info.confinement.calls_filtered, "this machine has no seccomp filter: the orphan may escape"
    child = int(failure.stdout.text().split()[1])
    deadline = time.monotonic() + 10
    while running(child):
        assert time.monotonic() < deadline, "the child that erased its marker outlived its worker"
        time.sleep(0.05)


def test_a_double_fork_daemon_is_gone_after_the_worker_closes(unconfined_pool, tmp_path):
    worker = unconfined_pool.acquire()
    with worker:
        worker.load(daemonising_program(tmp_path, ending="return weight"))
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
        daemon = pid_from(tmp_path / "pid")
        deadline = time.monotonic() + 10
        while psutil.Process(daemon).ppid() != worker.pid:  # its parent exits, and the worker adopts it
            assert time.monotonic() < deadline, "the daemon was not reparented to the worker"
            time.sleep(0.01)
    assert isinstance(result.outputs[0], np.ndarray)
    assert not psutil.pid_exists(daemon)


def test_a_limit_the_worker_itself_cannot_start_in_is_the_evaluators_fault_not_a_candidates():
    # 4 MiB: less than a forked worker's own pages, however many others share the zygote's with it
    with pytest.raises(SandboxFailure) as raised:
        Worker.start(dataclasses.replace(LIMITS, memory_mb=4), device="cpu", start_method="forkserver")
    assert raised.value.failure.kind is Status.INFRA_ERROR
    assert "before any program is loaded, over the limit of 4 MiB" in raised.value.failure.message


def test_a_memory_hog_hits_the_memory_limit(pool):
    failure, _ = run(pool, HOSTILE / "memory_hog.py")
    assert failure.kind is Status.MEMORY_LIMIT
    assert f"{LIMITS.memory_mb} MiB" in failure.message


def test_memory_spread_over_child_processes_counts_for_the_tree(pool):
    failure, left = run_watching_tree(pool, HOSTILE / "memory_hog_children.py")
    assert failure.kind is Status.MEMORY_LIMIT
    assert "processes used" in failure.message
    assert left == []


def test_memory_written_into_a_memfd_counts(pool):
    failure, _ = run(pool, HOSTILE / "memfd_hog.py")
    assert failure.kind is Status.MEMORY_LIMIT
    assert "MiB of it in files kept in memory" in failure.message


WRITES_ITS_FOLDER_FULL = f"""
import sys
import numpy as np
from evaluator.sandbox import Limits, SandboxFailure, WorkerPool
with WorkerPool(Limits(memory_mb=int(sys.argv[1])), device="cpu", spares=1) as pool:
    worker = pool.acquire()
    worker.load({str(HOSTILE / "file_hog.py")!r})
    try:
        worker.call(np.ones((1, 2), np.float32), [2, 1, 1, 1])
    except SandboxFailure as failure:
        print(failure.failure.kind.value, failure.failure.message)
"""


def test_files_written_into_a_folder_in_memory_count(tmp_path):
    """The worker's folder on tmpfs (the temporary folder is, on many machines): files it wrote and closed count."""
    shared_memory = Path("/dev/shm")
    limit_mb = 600
    if not (shared_memory.is_dir() and os.access(shared_memory, os.W_OK)
            and shutil.disk_usage(shared_memory).free > 2 * limit_mb * 2**20):
        pytest.skip("needs /dev/shm with room for twice the limit")
    folder = Path(tempfile.mkdtemp(dir=shared_memory))
    try:
        run = subprocess.run([sys.executable, "-c", WRITES_ITS_FOLDER_FULL, str(limit_mb)], cwd=ROOT, text=True,
                             capture_output=True, timeout=120, env={**os.environ, "TMPDIR": str(folder)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert run.stdout.startswith("memory_limit "), run.stdout + run.stderr
    assert "MiB of it in files kept in memory" in run.stdout


def test_a_fork_bomb_is_stopped_at_the_process_limit(pool):
    failure, left = run_watching_tree(pool, HOSTILE / "fork_bomb.py")
    assert failure.kind is Status.CRASH
    assert f"over the limit of {LIMITS.max_processes}" in failure.message
    assert left == []


def test_garbage_written_into_the_channel_is_a_crash(pool):
    failure, _ = run(pool, HOSTILE / "channel_garbage.py")
    assert failure.kind is Status.CRASH
    assert "malformed message" in failure.message


FORGES_A_FRAME = """
import json, os, stat, struct

def rebalance_experts(weight, *args):
    # a well-formed frame, into every pipe the program did not open: the result channel is one of them
    header = json.dumps({header!r}).encode()
    frame = struct.pack(">4sI", b"EPLB", len(header)) + header
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, frame)
        except OSError:
            pass
    {ending}
"""


def forging_program(tmp_path: Path, header: dict, ending: str = "return weight") -> Path:
    """A program that writes the frame `header` describes into the result channel during its call."""
    program = tmp_path / "forges_a_frame.py"
    program.write_text(FORGES_A_FRAME.format(header=header, ending=ending))
    return program


def crossed(offset: object, shape: list, dtype: str = "int64") -> dict:
    return {"device": "cpu", "dtype": dtype, "shape": shape, "offset": offset}


EXCHANGE_BYTES = LIMITS.exchange_bytes
# SMALL's input takes the exchange's first 256 bytes (4 x 16 float32): the outputs may begin there
OUTPUTS_START = 256


@pytest.mark.parametrize("outputs, expected", [
    ([crossed(0, [4])], "outside 256 to"),  # the input's part: the evaluator never reads back what it wrote
    ([crossed(EXCHANGE_BYTES - 64, [16])], "outside 256 to"),
    ([crossed(OUTPUTS_START, [0, 2**62, 4])], "outside 256 to"),
    ([crossed(OUTPUTS_START, [2**20])] * 16, "after the arrays before it"),  # 16 copies of 8 MB from one range
    ([crossed(OUTPUTS_START + 8, [4])], "not a multiple of 64"),
    ([crossed("256", [4])], "offset '256'"),
    ([crossed(OUTPUTS_START, [4], dtype="object")], "dtype 'object'"),
    ([crossed(OUTPUTS_START, [4], dtype=["int64"])], "dtype ['int64']"),  # unhashable: no TypeError may escape
    ([crossed(OUTPUTS_START, [2**40, -2**40])], "shape"),
    ([{"unsupported": {"type": "list", "detail": ""}}] * 17, "over the limit of 16"),
    (["int64"], "outputs are"),
    ([{"device": "cpu"}], "field 'unsupported'"),
], ids=["input-part", "past-the-end", "empty-but-huge", "one-range-sixteen-times", "unaligned", "string-offset",
        "object-dtype", "list-dtype", "negative-size", "too-many-outputs", "not-an-object", "neither-crossed-nor-described"])
def test_a_forged_result_the_worker_never_sends_is_a_crash(pool, tmp_path, outputs, expected):
    header = {"op": "batch_result", "claim_ns": 1, "calls": [{"returned_type": "tuple", "returned_length": len(outputs),
                                                              "input_mutated": False, "outputs": outputs}]}
    failure, _ = run(pool, forging_program(tmp_path, header))
    assert failure.kind is Status.CRASH
    assert "malformed result" in failure.message and expected in failure.message


def test_a_candidate_cannot_resize_the_exchange_and_its_writes_there_cost_only_its_own_outputs(pool):
    worker = pool.acquire()
    with worker:
        worker.load(HOSTILE / "tampers_with_the_exchange.py")
        results = [worker.call(weight_for(SMALL, seed), SMALL.rebalance_args()) for seed in range(5)]
        stdout, _ = worker.output()
    assert "resized" not in stdout.text() and stdout.text().count("refused: Operation not permitted") >= 2
    assert len(results) == 5  # the evaluator read every result, whatever the thread wrote meanwhile
    assert all(result.outputs[0].shape == (SMALL.num_layers, SMALL.num_experts) for result in results)


def exchanges_held() -> int:
    """How many descriptors of this process hold a worker's exchange."""
    held = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += "eplb-exchange" in os.readlink(f"/proc/self/fd/{name}")
    return held


@pytest.mark.parametrize("ending", ["finished", "failed"])
def test_a_closed_worker_leaves_no_exchange_behind(tmp_path, ending):
    before = exchanges_held()
    program = SEED if ending == "finished" else HOSTILE / "segfault.py"
    for _ in range(3):
        worker = Worker.start(LIMITS, device="cpu", start_method="forkserver")
        with contextlib.suppress(SandboxFailure), worker:
            worker.load(program)
            worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert exchanges_held() == before


@pytest.fixture
def moves(monkeypatch) -> list[tuple[int, set[int]]]:
    """Every move of a process onto CPUs the worker makes, in order: (pid, CPUs)."""
    made = []
    pin_threads = process_module.pin_threads
    monkeypatch.setattr(process_module, "pin_threads", lambda pid, cpus: (made.append((pid, set(cpus))),
                                                                        pin_threads(pid, cpus))[1])
    return made


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("wait", [True, False], ids=["waiting", "not-waiting"])
def test_a_worker_moved_onto_other_cpus_goes_back_to_its_own_before_it_is_killed(moves, wait):
    """Its exit (a CUDA context's teardown) then runs on the cores it started on, not on those the next program is
    timed on."""
    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    worker = Worker.start(LIMITS, device="cpu", start_method="forkserver", cpus=[first])
    worker.prepare([last])
    worker.load(SEED)
    assert os.sched_getaffinity(worker.pid) == {last}
    worker.close(wait=wait)
    assert moves == [(worker.pid, {first}), (worker.pid, {last}), (worker.pid, {first})]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("wait", [True, False], ids=["waiting", "not-waiting"])
def test_the_processes_a_moved_worker_started_go_back_with_it_before_they_are_killed(tmp_path, moves, monkeypatch,
                                                                                    wait):
    """A child that holds a CUDA context of its own would otherwise exit on the core the next program is timed on."""
    for kind, method, root in ((proctree.GroupLeader, "kill_group", "pid"), (proctree.ProcessTree, "kill", "root_pid")):
        monkeypatch.setattr(kind, method, lambda self, kill=getattr(kind, method), root=root: (
            moves.append(("kill", getattr(self, root))), kill(self))[1])
    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    program = tmp_path / "child.py"
    program.write_text("import subprocess, sys\n"
                       "CHILD = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                       "print(CHILD.pid, flush=True)\n"
                       "def rebalance_experts(weight, *args):\n    return weight\n")
    worker = Worker.start(LIMITS, device="cpu", start_method="forkserver", cpus=[first])
    worker.prepare([last])
    worker.load(program)
    child = int(worker.output()[0].text())
    assert os.sched_getaffinity(child) == {last}
    worker.close(wait=wait)
    assert moves.index((child, {first})) < moves.index(("kill", worker.pid))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("cpus", [None, "two"])
def test_a_prepared_worker_uses_a_thread_for_each_cpu_it_is_given_and_one_without(tmp_path, cpus):
    """Without CPUs of its own it shares the machine, and a second thread would be timed against other work."""
    cpus = sorted(os.sched_getaffinity(0))[:2] if cpus else None
    program = tmp_path / "threads.py"
    program.write_text("import torch\nprint(torch.get_num_threads(), flush=True)\n"
                       "def rebalance_experts(weight, *args):\n    return weight\n")
    worker = Worker.start(LIMITS, device="cpu", start_method="forkserver")
    try:
        worker.prepare(cpus)
        worker.load(program)
        assert int(worker.output()[0].text()) == (len(cpus) if cpus else 1)
    finally:
        worker.close()


def test_closing_the_channel_is_a_crash(pool):
    failure, _ = run(pool, HOSTILE / "channel_close.py")
    assert failure.kind is Status.CRASH
    assert "channel" in failure.message


@pytest.mark.parametrize("kind", ["infra_error", ["exception"]], ids=["infra-error", "unhashable"])
def test_a_forged_failure_of_a_kind_the_call_cannot_have_is_not_believed(pool, tmp_path, kind):
    """An `infra_error` would escape the candidate's score; a kind that is not even a string must not raise inside
    the evaluator (which would also end as its own fault)."""
    header = {"op": "fail", "kind": kind, "message": "not my fault"}
    failure, _ = run(pool, forging_program(tmp_path, header, ending="raise SystemExit(0)"))
    assert failure.kind is Status.CRASH
    assert f"kind {kind!r}" in failure.message


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_worker_reaches_nothing_outside_its_own_folder_and_tree(tmp_path, start_method):
    program = copy_hostile("reaches_outside.py", tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        environment = {"REACH_PORT": str(listening.getsockname()[1])}
        with WorkerPool(LIMITS, device="cpu", spares=0, environment=environment,
                        start_method=start_method) as own_pool:
            with own_pool.launch(program) as worker:
                worker.call(weight_for(SMALL), SMALL.rebalance_args())
                reached = json.loads(worker.output()[0].text())
                confinement = worker.info.confinement
    # wherever it runs: no capability, no privilege to gain, and the evaluator's memory out of reach
    assert ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0  # this process started workers: not dumpable
    assert confinement.capabilities_dropped and confinement.no_new_privileges
    assert reached["effective_capabilities"] == "0000000000000000" and reached["no_new_privileges"] == "1"
    assert reached["unconfined_threads"] == []  # confined before any thread was started, numpy's included
    assert reached["read_evaluator_memory"].startswith("refused")
    assert reached["write_own_folder"] == reached["write_temporary_folder"] == "done"
    # and where the kernel has Landlock, as it does on the machines this project runs on
    assert confinement.landlock_abi >= 1, "this kernel has no Landlock: the checks below did not run"
    assert confinement.writes_confined and reached["write_beside_program"].startswith("refused")
    assert reached["write_shared_memory"].startswith("refused")
    assert reached["open_the_null_device_for_writing"] == "done"
    assert reached["open_the_kernel_log_for_writing"].startswith("refused")  # as root, it was open before
    assert reached["open_a_disk_for_writing"] != "done" or not any(  # "done" only where /dev holds no disk
        stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode) for entry in os.scandir("/dev"))
    assert not (tmp_path / "reached").exists()
    if confinement.tcp_denied:
        assert reached["connect_tcp"].startswith("refused")
    if confinement.ioctls_confined or confinement.calls_filtered:  # either refuses a loop device's ioctls
        assert reached["ask_for_a_free_loop_device"].startswith("refused")
    if os.geteuid() == 0 and os.path.exists("/proc/self/loginuid"):  # set while the worker could, before the rest
        assert reached["set_a_threads_login_uid"] == "refused: Operation not permitted"
    # and where seccomp knows the architecture, as on the machines this project runs on
    assert confinement.calls_filtered or os.uname().machine not in ("x86_64", "aarch64")
    if confinement.calls_filtered:
        for attempt in ("change_a_files_mode", "change_a_files_times", "change_a_files_flags", "change_a_files_version",
                        "set_an_extended_attribute", "create_shared_memory", "create_a_message_queue", "add_a_key",
                        "read_the_evaluators_limits", "set_the_evaluators_priority", "set_the_evaluators_cpus",
                        "take_every_cpu",
                        "look_at_page_residency", "take_a_lease", "set_up_io_uring", "open_a_udp_socket",
                        "open_a_vsock_socket", "enter_a_user_namespace"):
            assert reached[attempt] == "refused: Operation not permitted", attempt
    if confinement.scoped:
        assert reached["signal_evaluator"].startswith("refused")


def test_input_mutation_is_reported(pool):
    result, _ = run(pool, HOSTILE / "mutates_input.py")
    assert result.input_mutated
    for received, expected in zip(result.outputs, seed_plan(weight_for(SMALL), SMALL)):
        np.testing.assert_array_equal(received, expected)


CHANGES_ITS_INPUT = """
import torch

def rebalance_experts(weight, *args):
    {change}
    return torch.zeros(1)
"""


def mutations_reported(pool: WorkerPool, tmp_path: Path, change: str, device: str) -> list[bool]:
    """Whether each call of a batch of three, of a program making `change` to its input, reported it changed: in a
    worker of `pool` on the CPU, else in one of its own on `device`."""
    program = tmp_path / "changes_its_input.py"
    program.write_text(CHANGES_ITS_INPUT.format(change=change))
    worker = pool.acquire() if device == "cpu" else Worker.start(LIMITS, device=device)
    try:
        worker.load(program)
        batch = worker.batch([weight_for(SMALL, seed) for seed in range(3)], SMALL.rebalance_args())
    finally:
        worker.close()
    return [call.input_mutated for call in batch.calls]


ON_EITHER_DEVICE = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])


@ON_EITHER_DEVICE
@pytest.mark.parametrize("change", [
    "weight[-1, -1] += 1", "weight.resize_(1, weight.shape[1])", "weight.transpose_(0, 1)",
    "weight.data = weight.data.double()", "weight.as_strided_(weight.shape, (0, 1))", "weight.set_()",
    "weight.data = weight.data.cpu() + 1"],
    ids=["one-element", "resized", "transposed", "another-dtype", "strides-changed", "storage-dropped",
         "moved-to-the-cpu"])
def test_every_kind_of_change_to_the_input_is_reported_in_every_call_of_a_batch(pool, tmp_path, change, device):
    assert mutations_reported(pool, tmp_path, change, device) == [True, True, True]


@ON_EITHER_DEVICE
def test_an_input_left_as_it_was_is_not_reported_whatever_else_the_program_did_with_it(pool, tmp_path, device):
    change = "weight.mul_(1); weight.data = weight.data.t().contiguous().t()"
    assert mutations_reported(pool, tmp_path, change, device) == [False, False, False]


def test_lists_are_described_not_sent(pool):
    result, _ = run(pool, HOSTILE / "returns_lists.py")
    assert result.returned_type == "list" and result.returned_length == 3
    assert [output.type_name for output in result.outputs] == ["list", "list", "list"]
    assert result.outputs[0].detail == f"{SMALL.num_layers} items"


def test_tensor_subclasses_other_dtypes_and_numpy_are_described_not_sent(pool):
    result, _ = run(pool, HOSTILE / "returns_tensor_subclass.py")
    subclass, bfloat, numpy_array = result.outputs
    assert subclass.type_name == "candidate.PlanTensor" and "subclass of torch.Tensor" in subclass.detail
    assert bfloat.type_name == "torch.Tensor" and "torch.bfloat16" in bfloat.detail
    assert numpy_array.type_name == "numpy.ndarray" and "int64" in numpy_array.detail
    assert result.output_devices == (None, None, None)


def test_a_patched_clock_does_not_shorten_the_measured_time(pool):
    with pool.launch(HOSTILE / "patched_clock.py") as worker:
        batch = worker.batch([weight_for(SMALL)], SMALL.rebalance_args())
    assert batch.claim_ns >= 250_000_000
    assert batch.round_trip_ns >= batch.claim_ns


# ---- the pool itself ------------------------------------------------------------------------------


def test_closing_a_pool_leaves_no_process():
    name = secrets.token_hex(8)  # this run's own, whatever else runs on the machine
    tag = f"SANDBOX_TEST_POOL={name}".encode()
    spare_pool = WorkerPool(LIMITS, device="cpu", spares=2, environment={"SANDBOX_TEST_POOL": name})
    assert spare_pool.wait_for_spares()
    spares = processes_with(tag)
    spare_pool.close()
    assert len(spares) == 2
    assert processes_with(tag) == []
    assert not any(psutil.pid_exists(pid) for pid in spares)


@pytest.mark.parametrize("after_s", [0.0, 0.05, 0.2])
def test_closing_a_pool_while_its_spares_start_leaves_no_process_once_it_returns(after_s):
    name = secrets.token_hex(8)
    tag = f"SANDBOX_TEST_POOL={name}".encode()
    spare_pool = WorkerPool(LIMITS, device="cpu", spares=3, environment={"SANDBOX_TEST_POOL": name})
    time.sleep(after_s)  # the spares' threads forking, or their workers importing
    spare_pool.close()
    assert processes_with(tag) == []


def test_a_spare_that_died_while_waiting_is_never_handed_out():
    name = secrets.token_hex(8)
    tag = f"SANDBOX_TEST_POOL={name}".encode()
    with WorkerPool(LIMITS, device="cpu", spares=1, environment={"SANDBOX_TEST_POOL": name}) as spare_pool:
        assert spare_pool.wait_for_spares()
        (spare,) = processes_with(tag)
        os.kill(spare, signal.SIGKILL)
        # until it can be collected (every thread gone), without collecting it: that is the pool's job
        while os.waitid(os.P_PID, spare, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.01)
        with spare_pool.launch(SEED) as worker:
            result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
        assert worker.pid != spare
        np.testing.assert_array_equal(result.outputs[0], seed_plan(weight_for(SMALL), SMALL)[0])


def test_a_worker_that_is_not_ready_in_time_is_an_infra_error():
    with pytest.raises(SandboxFailure) as raised:
        Worker.start(Limits(start_timeout_s=0.05), device="cpu")
    assert raised.value.failure.kind is Status.INFRA_ERROR
    assert "the worker's start took more than 0.05 s" in raised.value.failure.message


EVALUATOR_THAT_DIES = f"""
import os, sys, threading, time
import numpy as np
from evaluator.sandbox import Limits, Worker
worker = Worker.start(Limits(), device="cpu", start_method=sys.argv[1])
worker.load({str(HOSTILE / "hang_in_call.py")!r})
threading.Thread(target=worker.call, args=(np.ones((2, 4), np.float32), [4, 1, 1, 1]), daemon=True).start()
print(worker.pid, flush=True)
time.sleep(0.5)
os._exit(1)
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_worker_leaves_when_its_evaluator_dies(start_method):
    evaluator = subprocess.run([sys.executable, "-c", EVALUATOR_THAT_DIES, start_method], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)
    worker_pid = int(evaluator.stdout.split()[0])
    deadline = time.monotonic() + 10
    while psutil.pid_exists(worker_pid) and psutil.Process(worker_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker outlived its evaluator"
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):  # it may have been orphaned to us, a subreaper
        os.waitpid(worker_pid, os.WNOHANG)


def test_a_failed_worker_raises_its_failure_again(pool):
    worker = pool.acquire()
    with pytest.raises(SandboxFailure) as first:
        worker.load(HOSTILE / "sys_exit_at_import.py")
    with pytest.raises(SandboxFailure) as second:
        worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert second.value.failure is first.value.failure


# ---- on a GPU ---------------------------------------------------------------------------------------



@needs_cuda
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_on_cuda_the_seed_gets_its_input_on_the_gpu_and_returns_the_in_process_plan(start_method):
    problem = Problem()
    weight = weight_for(problem, seed=5)
    with Worker.start(LIMITS, device="cuda", start_method=start_method) as worker:
        worker.load(SEED)
        result = worker.call(weight, problem.rebalance_args())
    assert worker.info.device == "cuda" and worker.info.card == torch.cuda.get_device_name()
    for received, expected in zip(result.outputs, seed_plan(weight, problem)):
        np.testing.assert_array_equal(received, expected)


@needs_cuda
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_on_cuda_outputs_of_every_kind_arrive_as_returned_up_to_the_exchanges_end(tmp_path, start_method):
    large = (LIMITS.exchange_bytes - 4096) // 4  # int32s that fill the exchange after the other outputs
    with Worker.start(LIMITS, device="cuda", start_method=start_method) as worker:
        worker.load(of_every_kind(tmp_path, large))
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert_arrive_as_returned(result.outputs, expected_of_every_kind(weight_for(SMALL), large))
    assert result.output_devices[0] == "cuda:0" and result.output_devices[8] == "cpu"


@needs_cuda
def test_work_left_running_on_a_side_stream_is_timed():
    with Worker.start(LIMITS, device="cuda") as worker:
        worker.load(HOSTILE / "side_stream.py")
        batch = worker.batch([weight_for(SMALL)], SMALL.rebalance_args())
    assert batch.calls[0].output_devices == ("cuda:0",)
    assert batch.claim_ns > 100_000_000


TRITON_COPY = """
import torch, triton, triton.language as tl

@triton.jit
def _copy(source, target, count, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < count
    tl.store(target + offsets, tl.load(source + offsets, mask=inside), mask=inside)

def rebalance_experts(weight, *args):
    copied = torch.empty_like(weight)
    _copy[(triton.cdiv(weight.numel(), 256),)](weight, copied, weight.numel(), BLOCK=256)
    return copied
"""


@needs_cuda
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_triton_kernel_compiles_and_runs_in_a_confined_worker(tmp_path, start_method):
    """Its compiler writes caches and temporary files, which go to the worker's own folder."""
    pytest.importorskip("triton")
    program = tmp_path / "triton_copy.py"
    program.write_text(TRITON_COPY)
    with Worker.start(LIMITS, device="cuda", start_method=start_method) as worker:
        worker.load(program)
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert worker.info.confinement.writes_confined
    np.testing.assert_array_equal(result.outputs[0], weight_for(SMALL))


def test_a_pool_that_does_not_replenish_starts_no_spare_after_its_first():
    name = secrets.token_hex(8)
    tag = f"SANDBOX_TEST_POOL={name}".encode()
    with WorkerPool(LIMITS, device="cpu", spares=2, environment={"SANDBOX_TEST_POOL": name},
                    replenish=False) as spare_pool:
        assert spare_pool.wait_for_spares()
        first, second = spare_pool.acquire(), spare_pool.acquire()
        time.sleep(3)  # a replacement would have started, and shown up, by now
        assert sorted(processes_with(tag)) == sorted([first.pid, second.pid])
        first.close()
        second.close()
        with spare_pool.launch(SEED) as worker:  # a later one starts when it is asked for
            result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
        np.testing.assert_array_equal(result.outputs[0], seed_plan(weight_for(SMALL), SMALL)[0])


# ---- workers forked from the zygote (the pools' start method) ------------------------------------------


def test_a_forked_worker_holds_only_its_own_descriptors(pool):
    with pool.acquire() as worker:
        worker.load(HOSTILE / "lists_descriptors.py")
        held = json.loads(worker.output()[0].text())
    # nothing of the zygote's, its socket least of all: stdin, stdout, stderr, the channel's two pipes, the exchange
    # (and the copy its mapping holds)
    assert sorted(held, key=int)[:5] == ["0", "1", "2", "3", "4"]
    assert held["0"] == "/dev/null"
    assert all(target.startswith("pipe:") for name, target in held.items() if name in ("1", "2", "3", "4"))
    assert [target.split(" ")[0] for name, target in held.items() if int(name) > 4] == ["/memfd:eplb-exchange"] * 2


def test_a_forked_workers_environment_is_its_own_in_proc_too(tmp_path):
    with WorkerPool(LIMITS, device="cpu", spares=1, environment={"SANDBOX_TEST_POOL": tmp_path.name}) as own_pool:
        with own_pool.acquire() as worker:
            worker.load(HOSTILE / "prints_environment.py")
            seen = json.loads(worker.output()[0].text())
            with open(f"/proc/{worker.pid}/environ", "rb") as file:
                started_with = dict(entry.decode().split("=", 1) for entry in file.read().split(b"\0") if entry)
    assert seen["SANDBOX_TEST_POOL"] == tmp_path.name
    assert started_with == seen  # what the stray sweep and `ps` read is what the worker was given


@pytest.mark.parametrize("sent", ["SIGKILL", "SIGSTOP"])
def test_a_candidate_that_kills_or_stops_the_zygote_costs_later_candidates_nothing(sent):
    # a short start limit: a later start that waited on the stopped zygote would fail
    limits = dataclasses.replace(UNCONFINED, start_timeout_s=20)
    with WorkerPool(limits, device="cpu", spares=0, environment={"ZYGOTE_SIGNAL": sent}) as own_pool:
        worker = own_pool.launch(HOSTILE / "signals_the_zygote.py")
        with worker:
            worker.call(weight_for(SMALL), SMALL.rebalance_args())
            signalled = [int(pid) for pid in worker.output()[0].text().split()]
        with own_pool.launch(SEED) as next_worker:
            result = next_worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert signalled  # this test's zygote, and those earlier tests left
    np.testing.assert_array_equal(result.outputs[0], seed_plan(weight_for(SMALL), SMALL)[0])


def test_a_candidate_that_stops_the_zygotes_forks_costs_a_worker_starting_beside_it_nothing():
    with WorkerPool(UNCONFINED, device="cpu", spares=0) as own_pool:
        with own_pool.launch(HOSTILE / "stops_the_zygotes_forks.py") as hostile:
            caller = threading.Thread(target=hostile.call, args=(weight_for(SMALL), SMALL.rebalance_args()))
            caller.start()
            deadline = time.monotonic() + 30
            while "watching" not in hostile.output()[0].text():
                assert time.monotonic() < deadline, "the hostile program never started watching"
                time.sleep(0.01)
            with own_pool.launch(SEED) as worker:  # its fork is stopped: it is spawned instead
                result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
            caller.join()
            watching, *pids = hostile.output()[0].text().split()
    stopped = [int(pid) for pid in pids]
    assert watching == "watching" and stopped
    np.testing.assert_array_equal(result.outputs[0], seed_plan(weight_for(SMALL), SMALL)[0])
    deadline = time.monotonic() + 30
    while any(map(running, stopped)):  # the zygote kills what it forked and was stopped; nothing stays behind
        assert time.monotonic() < deadline, "a stopped fork outlived the start"
        time.sleep(0.1)


def test_forked_workers_draw_different_random_numbers(pool, tmp_path):
    program = tmp_path / "draws.py"
    program.write_text("import random, numpy\n"
                       "print(numpy.random.random(), random.random(), flush=True)\n"
                       "def rebalance_experts(weight, *args):\n    return weight\n")
    draws = []
    for _ in range(2):
        with pool.acquire() as worker:
            worker.load(program)
            draws.append(worker.output()[0].text().split())
    (numpy_first, random_first), (numpy_second, random_second) = draws
    assert numpy_first != numpy_second and random_first != random_second


EVALUATOR_WITH_A_ZYGOTE = """
import os, time
from evaluator.sandbox import Limits, WorkerPool
pool = WorkerPool(Limits(), device="cpu", spares=1)
assert pool.wait_for_spares()
for name in os.listdir("/proc"):
    try:
        environment = open(f"/proc/{name}/environ", "rb").read()
        parent = int(open(f"/proc/{name}/stat", "rb").read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError):
        continue
    if parent == os.getpid() and b"EPLB_SANDBOX_ENVIRONMENT_ROOM=" in environment:
        print(name, flush=True)
os._exit(1)
"""


def test_the_zygote_leaves_when_its_evaluator_dies():
    evaluator = subprocess.run([sys.executable, "-c", EVALUATOR_WITH_A_ZYGOTE], capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
    (zygote,) = [int(pid) for pid in evaluator.stdout.split()]
    deadline = time.monotonic() + 10
    while psutil.pid_exists(zygote) and psutil.Process(zygote).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the zygote outlived its evaluator"
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(zygote, os.WNOHANG)


def test_a_forked_worker_sees_the_thread_count_its_environment_sets_at_import(tmp_path):
    program = tmp_path / "threads.py"
    program.write_text("import torch\nprint(torch.get_num_threads(), flush=True)\n"
                       "def rebalance_experts(weight, *args):\n    return weight\n")
    with WorkerPool(LIMITS, device="cpu", spares=0, environment={"OMP_NUM_THREADS": "1"}) as own_pool:
        with own_pool.launch(program) as worker:
            threads = int(worker.output()[0].text())
    assert threads == 1  # read when torch is imported: in a zygote of that environment, not of another


OF_EVERY_KIND = """
import torch
def rebalance_experts(weight, *args):
    device = weight.device
    padded = torch.full((3, 4, 9), -1, device=device)
    padded[:, :, :2] = torch.arange(24, device=device).view(3, 4, 2)
    bounds = torch.tensor([[-2**15, 2**15 - 1], [-2**31, 2**31 - 1], [-2**63, 2**63 - 1]], device=device)
    return (padded, bounds.t(), padded[:, 1, ::2], torch.tensor(-1, device=device),
            torch.zeros(2, 0, dtype=torch.int64, device=device), torch.tensor([True, False], device=device),
            torch.arange(5, dtype=torch.float16, device=device), weight.requires_grad_(True) * 2,
            torch.arange(7, dtype=torch.int8), torch.full(({large},), 3, dtype=torch.int32, device=device))
"""


def of_every_kind(tmp_path: Path, large: int) -> Path:
    """A program returning tensors of many dtypes and layouts (one on the CPU whatever the worker's device), the
    last of `large` elements."""
    program = tmp_path / "of_every_kind.py"
    program.write_text(OF_EVERY_KIND.format(large=large))
    return program


def expected_of_every_kind(weight: np.ndarray, large: int) -> list[np.ndarray]:
    padded = np.full((3, 4, 9), -1)
    padded[:, :, :2] = np.arange(24).reshape(3, 4, 2)
    bounds = np.array([[-2**15, 2**15 - 1], [-2**31, 2**31 - 1], [-2**63, 2**63 - 1]])
    return [padded, bounds.T, padded[:, 1, ::2], np.array(-1), np.zeros((2, 0), dtype=np.int64),
            np.array([True, False]), np.arange(5, dtype=np.float16), weight * 2, np.arange(7, dtype=np.int8),
            np.full(large, 3, dtype=np.int32)]


def assert_arrive_as_returned(received: tuple, expected: list[np.ndarray]) -> None:
    assert len(received) == len(expected)
    for got, wanted in zip(received, expected):
        assert got.dtype == wanted.dtype and got.shape == wanted.shape
        np.testing.assert_array_equal(got, wanted)


def test_outputs_of_every_dtype_and_layout_arrive_as_they_were_returned(pool, tmp_path):
    result, _ = run(pool, of_every_kind(tmp_path, 1000))
    assert_arrive_as_returned(result.outputs, expected_of_every_kind(weight_for(SMALL), 1000))


def test_outputs_too_large_for_the_exchange_are_described_not_sent(tmp_path):
    limits = dataclasses.replace(LIMITS, exchange_bytes=1 << 20)
    with Worker.start(limits, device="cpu") as worker:
        worker.load(of_every_kind(tmp_path, 1 << 18))  # 1 MiB in its last output alone
        result = worker.call(weight_for(SMALL), SMALL.rebalance_args())
    assert len(result.outputs) == 10
    assert all(isinstance(output, Unsupported) and "too large to return" in output.detail
               for output in result.outputs)


# ---- batches of calls ---------------------------------------------------------------------------------


def test_a_batch_gives_each_input_its_own_plan_in_order(pool):
    weights = [weight_for(SMALL, seed) for seed in range(4)]
    with pool.launch(SEED) as worker:
        batch = worker.batch(weights, SMALL.rebalance_args())
        after = worker.call(weight_for(SMALL, 9), SMALL.rebalance_args())
    assert [result.call_index for result in batch.calls] == [1, 2, 3, 4] and after.call_index == 5
    for result, weight in zip(batch.calls, weights):
        np.testing.assert_array_equal(result.outputs[0], seed_plan(weight, SMALL)[0])
    assert 0 < batch.claim_ns <= batch.round_trip_ns


def test_the_next_batch_is_sent_only_once_a_result_has_arrived(pool, tmp_path):
    program = tmp_path / "peeks.py"
    program.write_text("import select, time\n"
                       "def rebalance_experts(weight, *args):\n"
                       "    time.sleep(0.02)  # time for a next batch to arrive, were it sent early\n"
                       "    print('waiting' if select.select([3], [], [], 0)[0] else 'alone', flush=True)\n"
                       "    return weight\n")
    with pool.launch(program) as worker:
        for seed in range(3):
            worker.batch([weight_for(SMALL, seed), weight_for(SMALL, seed + 10)], SMALL.rebalance_args())
        seen = worker.output()[0].text().split()
    assert seen == ["alone"] * 6


def test_a_call_that_raises_ends_its_batch_as_an_exception(pool, tmp_path):
    program = tmp_path / "second_raises.py"
    program.write_text("calls = 0\n"
                       "def rebalance_experts(weight, *args):\n"
                       "    global calls\n    calls += 1\n"
                       "    if calls == 2:\n        raise ValueError('the second call fails')\n"
                       "    return weight\n")
    with pool.launch(program) as worker, pytest.raises(SandboxFailure) as raised:
        worker.batch([weight_for(SMALL, seed) for seed in range(4)], SMALL.rebalance_args())
    assert raised.value.failure.kind is Status.EXCEPTION and "the second call fails" in raised.value.failure.message


def test_outputs_a_later_call_of_the_batch_fills_again_are_named(pool, tmp_path):
    """A program that returns the same tensors from every call, filled anew, changes the plans it returned before,
    which are read only once the batch is over."""
    program = tmp_path / "fills_again.py"
    program.write_text(textwrap.dedent(f"""
        import importlib.util
        _spec = importlib.util.spec_from_file_location("seed", {str(SEED)!r})
        seed = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(seed)
        _kept = []
        def rebalance_experts(weight, *args):
            plan = seed.rebalance_experts(weight, *args)
            if not _kept:
                _kept.extend(plan)
            for kept, fresh in zip(_kept, plan):
                kept.copy_(fresh)
            return tuple(_kept)
        """))
    with pool.launch(program) as worker:
        batch = worker.batch([weight_for(SMALL, seed) for seed in range(3)], SMALL.rebalance_args())
        alone = worker.batch([weight_for(SMALL, 5)], SMALL.rebalance_args())
    assert [result.shares_memory_with for result in batch.calls] == [None, 1, 1]
    assert alone.calls[0].shares_memory_with is None  # the tensors of an earlier batch were read already


def test_a_paused_worker_runs_no_thread_until_it_is_resumed(pool, tmp_path):
    program = tmp_path / "counts.py"
    program.write_text(textwrap.dedent("""
        import threading, time
        ticks = [0]
        def _count():
            while True:
                ticks[0] += 1
                time.sleep(0.001)
        threading.Thread(target=_count, daemon=True).start()
        def rebalance_experts(weight, *args):
            print("ticks", ticks[0], flush=True)
            return weight
        """))

    def ticks(worker: Worker) -> int:
        worker.call(weight_for(SMALL), SMALL.rebalance_args())
        return int(worker.output()[0].text().split()[-1])

    with pool.launch(program) as worker:
        before = ticks(worker)
        worker.pause()
        time.sleep(0.3)
        worker.resume()
        after_pause = ticks(worker)
        time.sleep(0.3)
        after_running = ticks(worker)
    assert after_pause - before < 50  # 0.3 s paused: a few ticks at most, before the stop landed and after
    assert after_running - after_pause > 100
