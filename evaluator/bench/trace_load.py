"""How long a trace in the published JSON format takes to load, and how much memory the loading takes.

`measure` writes a synthetic trace file of the requested size into a temporary folder, loads it with
`load_trace_file` in a fresh Python process (so that nothing already imported or cached helps) and
reports the seconds the load took and the process's peak resident memory. The folder is removed after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.eplb.trace import STEPS_PER_WINDOW
from evaluator.eplb.trace_file import load_trace_file

DEFAULT_SIZE_BYTES = 250 * 10**6
_STEPS_PER_BLOCK = 256  # steps generated at a time while writing, to keep the writer's memory small
_CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class TraceLoadResult:
    file_bytes: int
    steps: int
    windows: int
    window: int
    seconds: float  # load_trace_file alone, in the fresh process
    peak_rss_bytes: int  # the fresh process's peak resident memory, imports included
    imports_rss_bytes: int  # its peak resident memory before loading: the interpreter and imports
    cpus: int
    machine: str


def measure(size_bytes: int = DEFAULT_SIZE_BYTES, window: int = STEPS_PER_WINDOW, problem: Problem | None = None) -> TraceLoadResult:
    """Write a published-format trace of about `size_bytes` and time loading it in a fresh process.
    RuntimeError if the load fails or takes too long; OSError if the file cannot be written."""
    problem = problem or Problem()
    with tempfile.TemporaryDirectory(prefix="trace-load-") as folder:
        path = Path(folder) / "load_history.json"
        steps = write_published_trace(path, size_bytes, problem, min_steps=2 * window)
        file_bytes = path.stat().st_size
        command = [sys.executable, "-m", __name__, str(path), str(window), json.dumps(dataclasses.asdict(problem))]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"loading the trace took more than {_CHILD_TIMEOUT_S} s") from None
    if child.returncode != 0:
        raise RuntimeError(f"loading the trace failed (exit code {child.returncode}): {child.stderr.strip()}")
    report = json.loads(child.stdout)
    return TraceLoadResult(
        file_bytes=file_bytes,
        steps=steps,
        window=window,
        cpus=os.cpu_count() or 1,
        machine=platform.machine(),
        **report,
    )


def write_published_trace(path: Path, size_bytes: int, problem: Problem, min_steps: int = 2, seed: int = 0) -> int:
    """Write synthetic per-step loads in the published format until the file holds about `size_bytes`
    and at least `min_steps` steps; return the number of steps written."""
    config = SyntheticConfig.for_problem(problem, num_windows=_STEPS_PER_BLOCK, steps_per_window=1)
    steps = 0
    with open(path, "w", encoding="utf-8") as file:
        file.write('{"load_history": [')
        while steps < min_steps or file.tell() < size_bytes:
            block = generate_trace(config, seed + steps // _STEPS_PER_BLOCK).windows
            for loads in block:
                file.write(", " if steps else "")
                file.write(json.dumps({"logical_expert_load": loads.tolist()}))
                steps += 1
                if steps >= min_steps and file.tell() >= size_bytes:
                    break
        file.write("]}\n")
    return steps


def _load_and_report(path: str, window: str, problem_json: str) -> None:
    """In the fresh process: load the file and print what it took, as JSON."""
    problem = Problem(**json.loads(problem_json))
    imports_rss = _peak_rss_bytes()
    start = time.perf_counter()
    trace = load_trace_file(path, problem, int(window))
    seconds = time.perf_counter() - start
    report = {
        "windows": trace.num_windows,
        "seconds": seconds,
        "peak_rss_bytes": _peak_rss_bytes(),
        "imports_rss_bytes": imports_rss,
    }
    print(json.dumps(report))


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux it is read from /proc: getrusage would also count
    the parent's memory at the time of the fork, which Linux carries across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, other systems kilobytes


if __name__ == "__main__":
    _load_and_report(*sys.argv[1:])
