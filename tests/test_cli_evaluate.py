"""`python -m evaluator evaluate` through a real subprocess, with several programs at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from small_problem import SMALL_OPTIONS

from evaluator.exitcodes import ExitCode
from evaluator.paths import SEED_PROGRAM


def evaluate(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "evaluate", *args, "--device", "cpu", *SMALL_OPTIONS],
                          cwd=cwd, capture_output=True, text=True, timeout=180)


def test_several_programs_each_get_a_result_and_progress_is_shown(tmp_path):
    raising = tmp_path / "raising.py"
    raising.write_text("def rebalance_experts(*args):\n    raise RuntimeError('no plan today')\n")
    run = evaluate(str(SEED_PROGRAM), str(raising), "--json", cwd=tmp_path)
    assert run.returncode == ExitCode.CANDIDATE_FAILED, run.stderr  # the worst of the results
    results = {Path(line["program"]).name: line for line in map(json.loads, run.stdout.splitlines())}
    assert results["eplb.py"]["status"] == "ok" and results["eplb.py"]["combined_score"] > 0
    assert results["raising.py"]["status"] == "exception" and "no plan today" in results["raising.py"]["error"]
    assert "[1/2]" in run.stderr and "[2/2]" in run.stderr


def test_a_gpu_list_that_is_not_one_is_refused_before_anything_runs(tmp_path):
    run = evaluate(str(SEED_PROGRAM), "--gpu-ids", "0,x", cwd=tmp_path)
    assert run.returncode == ExitCode.BAD_INPUT and "GPU indices" in run.stderr
    run = evaluate(str(SEED_PROGRAM), "--gpu-ids", "0", cwd=tmp_path)
    assert run.returncode == ExitCode.BAD_INPUT and "--gpu-ids 0: GPUs were named" in run.stderr
