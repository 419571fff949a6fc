"""GPU memory: a program's processes are held to `gpu_memory_mb` however they allocate it (torch's allocator is capped
in the worker; the driver's count is read by the evaluator after every reply), and a program that runs out of GPU
memory because another process holds it is not blamed for it. Real workers on a real GPU: skipped without one."""

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from small_problem import SMALL, SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator
from evaluator.sandbox import Limits, SandboxFailure, Worker, WorkerPool
from evaluator.status import Status

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HOSTILE = Path(__file__).resolve().parent / "hostile"
SEED = Path(__file__).resolve().parent.parent / "seeds" / "eplb.py"
LIMITS = Limits(timeout_s=60, import_timeout_s=60, gpu_memory_mb=1024)
UNLIMITED = dataclasses.replace(LIMITS, gpu_memory_mb=2**30)  # for the process that fills the GPU
MODEST = """
import torch

def rebalance_experts(weight, *args):
    taken = torch.ones(512 * 2**20, dtype=torch.uint8, device=weight.device)
    return weight + int(taken[0]) - 1
"""


def weight() -> np.ndarray:
    return np.random.default_rng(0).lognormal(size=(SMALL.num_layers, SMALL.num_experts)).astype(np.float32)


def failure_of(worker: Worker, program: Path) -> SandboxFailure:
    worker.load(program)
    with pytest.raises(SandboxFailure) as raised:
        worker.call(weight(), SMALL.rebalance_args())
    return raised.value


def fill_the_gpu(worker: Worker) -> None:
    worker.load(HOSTILE / "fills_the_gpu.py")
    worker.call(weight(), SMALL.rebalance_args())


@pytest.fixture
def modest(tmp_path) -> Path:
    program = tmp_path / "modest.py"
    program.write_text(textwrap.dedent(MODEST))
    return program


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_the_driver_counts_what_a_worker_holds(start_method, modest):
    with Worker.start(LIMITS, device="cuda", start_method=start_method) as worker:
        assert worker.info.gpu_memory_counted
        worker.load(modest)
        worker.call(weight(), SMALL.rebalance_args())  # 512 MiB of its 1024: within the limit


def test_a_program_that_allocates_through_torch_past_its_limit_ends_as_memory_limit():
    with Worker.start(LIMITS, device="cuda") as worker:
        failure = failure_of(worker, HOSTILE / "gpu_memory_hog.py").failure
    assert failure.kind is Status.MEMORY_LIMIT and "out of memory" in failure.message


@pytest.mark.parametrize("program", ["gpu_memory_uncapped.py", "gpu_memory_around_torch.py"])
def test_memory_held_past_torchs_cap_is_counted_by_the_driver(program):
    with Worker.start(LIMITS, device="cuda") as worker:
        failure = failure_of(worker, HOSTILE / program).failure
    assert failure.kind is Status.MEMORY_LIMIT
    assert "as the driver counts it" in failure.message and "over the limit of 1024 MiB" in failure.message


def test_a_program_crowded_out_by_another_process_is_not_blamed(modest):
    with Worker.start(LIMITS, device="cuda") as crowded:  # ready before the GPU fills
        with Worker.start(UNLIMITED, device="cuda") as filler:
            fill_the_gpu(filler)
            failure = failure_of(crowded, modest).failure
    assert failure.kind is Status.INFRA_ERROR and "other processes held the rest" in failure.message
    with Worker.start(LIMITS, device="cuda") as after:  # the filler's memory is back once it is gone
        after.load(modest)
        after.call(weight(), SMALL.rebalance_args())


def test_a_spare_that_could_not_start_on_a_full_gpu_costs_the_next_candidate_nothing(modest):
    with Worker.start(UNLIMITED, device="cuda") as filler:
        fill_the_gpu(filler)
        pool = WorkerPool(LIMITS, device="cuda", spares=1)
        assert not pool.wait_for_spares(60)  # the spare found no memory for its CUDA context
    with pool, pool.launch(modest) as worker:
        worker.call(weight(), SMALL.rebalance_args())


def test_an_evaluation_after_a_program_that_held_too_much_is_scored_as_usual():
    settings = dataclasses.replace(SMALL_SETTINGS, limits=dataclasses.replace(SMALL_SETTINGS.limits,
                                                                              gpu_memory_mb=1024))
    with Evaluator(SMALL_TRACE, settings, device="cuda", spares=2) as evaluator:
        held_too_much = [evaluator.evaluate(HOSTILE / name) for name in ("gpu_memory_around_torch.py",
                                                                          "gpu_memory_hog.py")]
        seed = evaluator.evaluate(SEED)
    assert [result.status for result in held_too_much] == [Status.MEMORY_LIMIT] * 2
    assert seed.status == Status.OK and seed.sandbox["gpu_memory_counted"] is True
