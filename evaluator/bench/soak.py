"""One evaluator, many evaluations of honest and hostile programs mixed as a loop would send them: what it leaks.

The hostile programs are one of each class the sandbox stops (a crash, a hang, an output flood, a fork bomb, a memory
hog, an exception, an invalid plan). After the last evaluation the evaluator is closed, and this process's zygotes
and guard (which outlive an evaluator, for the next one) are stopped; then what is left is counted against the state
before the evaluator: processes working in this process's scratch root, its children, its file descriptors, files in
/dev/shm and folders in its scratch root; and how its own memory grew. Every honest program's balancedness must
equal its first result's.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from evaluator import scratch
from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.evaluation import Evaluator, Settings
from evaluator.bench.speed_classes import SPEED_CLASSES
from evaluator.evaluation.timing import ReferenceCache
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import Limits, forkserver, guard

PROBLEM = Problem(num_layers=6, num_experts=32, num_replicas=48, num_groups=4, num_nodes=2, num_gpus=8)
TIMEOUT_S = 6.0  # a hang costs this much; an honest program takes about a second
MEMORY_MB = 1024
_WITH_SEED = f"""import importlib.util, os, sys
_spec = importlib.util.spec_from_file_location("seed_eplb", {str(SEED_PROGRAM)!r})
seed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed)
"""
HOSTILE = {
    "crash": "import ctypes\ndef rebalance_experts(*args):\n    ctypes.string_at(0)\n",
    "hang": "def rebalance_experts(*args):\n    while True:\n        pass\n",
    "flood": _WITH_SEED + "def rebalance_experts(weight, *args):\n    sys.stdout.write('x' * 2**24)\n"
                          "    return seed.rebalance_experts(weight, *args)\n",
    "fork": "import os, time\ndef rebalance_experts(*args):\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(3600)\n            os._exit(0)\n",
    "memory": "def rebalance_experts(*args):\n    hoard = []\n    while True:\n"
              "        hoard.append(bytearray(64 * 2**20))\n",
    "exception": "def rebalance_experts(*args):\n    raise ValueError('no plan')\n",
    "invalid": _WITH_SEED + "def rebalance_experts(weight, *args):\n    phy2log, log2phy, logcnt = "
                            "seed.rebalance_experts(weight, *args)\n    return phy2log * 0, log2phy, logcnt\n",
}

HONEST = ("seed", "seed-patch", "topk-snake")  # the seed, and the speed classes of those names
PROGRAMS = (*HONEST, *HOSTILE)


@dataclass(frozen=True)
class SoakResult:
    evaluations: int
    seconds: float
    device: str
    statuses: dict[str, dict[str, int]]  # per program, how many evaluations ended in each status
    honest_mismatches: list[str]  # honest evaluations whose balancedness differed from that program's first
    processes_left: list[int]  # working in this process's scratch root (workers, the zygote, what they started)
    children_left: int  # this process's children after the evaluator closed
    descriptors: tuple[int, int]  # this process's open file descriptors before the evaluator, and at the end
    shm_files: tuple[int, int]  # files in /dev/shm, before and at the end
    scratch_left: list[str]  # folders left in this process's scratch root
    rss_mb: list[float] = field(default_factory=list)  # this process's resident memory after each tenth

    @property
    def left_nothing(self) -> bool:
        """No process, child, scratch folder, descriptor or /dev/shm file more than before, and every honest result
        as its first."""
        return not (self.processes_left or self.children_left or self.scratch_left or self.honest_mismatches
                    or self.descriptors[1] > self.descriptors[0] or self.shm_files[1] > self.shm_files[0])

    @property
    def rss_growth_mb(self) -> float:
        """From the first tenth's end (the evaluator warm) to the last."""
        return self.rss_mb[-1] - self.rss_mb[0] if self.rss_mb else 0.0


def measure(evaluations: int, device: str = "auto", seed: int = 0) -> SoakResult:
    """Evaluate `evaluations` programs (at least one of each), honest and hostile in shuffled rounds, in one evaluator;
    count what is left."""
    trace = generate_trace(SyntheticConfig.for_problem(PROBLEM, num_windows=6), seed=11)
    settings = Settings(problem=PROBLEM, timeout_s=TIMEOUT_S, limits=Limits(memory_mb=MEMORY_MB))
    root = scratch.process_root()  # held while this process lives: made first, so that the counts below include it
    descriptors_before, shm_before = _descriptors(), _shm_files()
    statuses: dict[str, Counter[str]] = {}
    first: dict[str, float] = {}
    mismatches, rss = [], []
    order = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eplb-soak-") as folder:
        programs = _programs(Path(folder))
        with Evaluator(trace, settings, device=device, seed_references=ReferenceCache(None)) as evaluator:
            round_: list[str] = []
            for number in range(1, evaluations + 1):
                if not round_:
                    round_ = order.sample(sorted(programs), len(programs))
                name = round_.pop()
                result = evaluator.evaluate(programs[name])
                statuses.setdefault(name, Counter())[result.status] += 1
                if name in HONEST:
                    if result.ok and first.setdefault(name, result.balancedness_score) != result.balancedness_score:
                        mismatches.append(f"{name} #{number}: {result.balancedness_score!r} against {first[name]!r}")
                    elif not result.ok:
                        mismatches.append(f"{name} #{number}: {result.status}: {result.error}")
                if number % max(1, evaluations // 10) == 0:
                    rss.append(psutil.Process().memory_info().rss / 2**20)
            used = evaluator.lanes.lanes[0].device
    forkserver.close_all()
    guard.close()
    seconds = time.perf_counter() - started
    return SoakResult(evaluations, seconds, used, {name: dict(counts) for name, counts in sorted(statuses.items())},
                      mismatches, scratch.processes_working_in(root), len(psutil.Process().children(recursive=True)),
                      (descriptors_before, _descriptors()), (shm_before, _shm_files()), _scratch_left(root), rss)


def _programs(folder: Path) -> dict[str, Path]:
    """The honest programs (the seed, the seed patch's, a fast one) and one file per hostile class."""
    programs = {"seed": SEED_PROGRAM}
    for speed in SPEED_CLASSES:
        if speed.name in HONEST:
            programs[speed.name] = speed.write(folder / f"{speed.name}.py")
    for name, source in HOSTILE.items():
        programs[name] = folder / f"{name}.py"
        programs[name].write_text(source, encoding="utf-8")
    return programs


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _shm_files() -> int:
    try:
        return len(os.listdir("/dev/shm"))
    except OSError:
        return 0


def _scratch_left(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if not path.name.startswith("."))
