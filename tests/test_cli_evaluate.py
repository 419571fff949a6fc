"""`python -m evaluator evaluate` through a real subprocess, with several programs at once."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from small_problem import SMALL_OPTIONS

from evaluator.commands.evaluate import _threads
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


FORGING = '''
import sys
def rebalance_experts(*args):
    sys.stderr.buffer.write(b"\\xff\\xfe not UTF-8\\x1b[31m red\\x07\\n")
    sys.stderr.flush()
    raise ValueError("\\x1b[2J\\x00\\u202e cleared\\nother.py: ok\\n  combined_score 1.0000")
'''


def test_a_programs_text_is_shown_as_its_own_escaped_and_kept_as_it_was_in_json(tmp_path):
    """Escape sequences, NUL bytes, bidirectional overrides, bytes that are not UTF-8 and a forged report line, in
    an exception and on stderr."""
    program = tmp_path / "forging.py"
    program.write_text(FORGING)
    text = evaluate(str(program), cwd=tmp_path)
    assert text.returncode == ExitCode.CANDIDATE_FAILED, text.stderr
    assert not any(character in text.stdout for character in "\x1b\x00\x07\u202e\ufffd")
    assert "\\x1b[2J\\x00\\u202e cleared" in text.stdout and "\\x1b[31m red\\x07" in text.stdout
    assert "\\xff\\xfe not UTF-8" in text.stdout  # the bytes shown, not replaced
    report_lines = [line for line in text.stdout.splitlines() if not line.startswith("  | ")]
    assert report_lines[0] == f"{program}: exception" and "other.py: ok" not in "\n".join(report_lines)
    assert "  | other.py: ok" in text.stdout.splitlines()
    [line] = evaluate(str(program), "--json", cwd=tmp_path).stdout.splitlines()
    result = json.loads(line)  # valid JSON, and the text as the program wrote it
    assert "\x1b[2J\x00\u202e cleared\nother.py: ok" in result["error"]
    assert "\\xff\\xfe not UTF-8\x1b[31m red\x07" in result["stderr"]


def test_on_a_cluster_every_program_gets_a_thread_so_that_nodes_joining_later_are_used():
    def options(backend: str) -> argparse.Namespace:
        return argparse.Namespace(backend=backend, address=None, gpu_ids=None)

    two_lanes = SimpleNamespace(lane_count=2)  # as many as the cluster had when the command started
    assert _threads(options("ray"), two_lanes, 40) == 40
    assert _threads(options("ray"), two_lanes, 10_000) == 256
    assert _threads(options("local"), two_lanes, 40) == 3
    assert _threads(options("local"), two_lanes, 1) == 1
