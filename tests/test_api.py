"""The Python API: programs and patches in, typed results out, safe from threads, asyncio and other processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from failing_programs import DROPS_AN_EXPERT
from small_problem import SMALL, SMALL_OPTIONS, SMALL_SETTINGS, SMALL_TRACE

from evaluator import api
from evaluator.eplb.holdout import KEY_VARIABLE, holdout_trace
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.evaluation import Result
from evaluator.parent import ParentError
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM

SEED_PATCH_TEXT = (PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff").read_text()


@pytest.fixture(scope="module")
def shared():
    """The API's own shared evaluator, configured for the small problem."""
    api.configure(trace=SMALL_TRACE, settings=SMALL_SETTINGS, device="cpu")
    return api.shared_evaluator()


def stamping_program(folder: Path, name: str) -> Path:
    """The seed, printing the wall-clock span of every call it serves."""
    program = folder / f"{name}.py"
    program.write_text(textwrap.dedent(f"""
        import importlib.util, time
        _spec = importlib.util.spec_from_file_location("seed_eplb", {str(SEED_PROGRAM)!r})
        seed = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(seed)

        def rebalance_experts(*args):
            start = time.time()
            plan = seed.rebalance_experts(*args)
            print("stamp", start, time.time(), flush=True)
            return plan
    """))
    return program


def span(stdout: str) -> tuple[float, float]:
    """From the first call's start to the last call's end, as the candidate's process printed them."""
    calls = [tuple(map(float, line.split()[1:])) for line in stdout.splitlines() if line.startswith("stamp ")]
    assert len(calls) >= len(SMALL_TRACE.windows), "every scheduled call leaves a stamp"
    return min(start for start, _ in calls), max(end for _, end in calls)


def assert_apart(first: tuple[float, float], second: tuple[float, float]) -> None:
    assert first[1] < second[0] or second[1] < first[0], f"two candidates ran at once: {first} and {second}"


def test_a_program_given_by_path_or_by_source_scores_the_same(small):
    by_path = api.evaluate_program(SEED_PROGRAM, evaluator=small)
    by_text = api.evaluate_program(SEED_PROGRAM.read_text(), evaluator=small)
    assert isinstance(by_path, Result) and by_path.ok and by_text.ok, (by_path.error, by_text.error)
    assert by_path.balancedness_score == by_text.balancedness_score > 0
    assert by_text.combined_score > 0 and by_text.time_ms > 0 and by_text.device == "cpu"
    assert by_text.timing["lane"] == "cpu"


def test_a_path_or_parent_that_names_no_file_is_the_callers_mistake(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="no program file"):
        api.evaluate_program(tmp_path / "missing.py", evaluator=small)
    with pytest.raises(ParentError, match="neither a program file nor a stored candidate"):
        api.evaluate_patch(SEED_PATCH_TEXT, parent=tmp_path / "missing.py", store=tmp_path, evaluator=small)


def test_the_seed_patch_applies_to_the_seed_and_keeps_its_balancedness(small):
    seed = api.evaluate_program(SEED_PROGRAM, evaluator=small)
    patched = api.evaluate_patch(SEED_PATCH_TEXT, evaluator=small)
    assert patched.ok, patched.error
    assert patched.balancedness_score == seed.balancedness_score


def test_a_patch_applies_to_a_parent_file(small, tmp_path):
    parent = tmp_path / "parent.py"
    parent.write_text(SEED_PROGRAM.read_text().replace("def rebalance_experts(", "def rebalance_experts_v1(", 1))
    patch = textwrap.dedent("""
        <<<<<<< SEARCH
        def rebalance_experts_v1(
        =======
        def rebalance_experts(
        >>>>>>> REPLACE
    """)
    assert api.evaluate_program(parent, evaluator=small).status == "missing_function"
    assert api.evaluate_patch(patch, parent=parent, evaluator=small).ok


def test_a_patch_that_does_not_apply_says_which_block_and_what_is_closest(small):
    patch = textwrap.dedent("""
        <<<<<<< SEARCH
            num_layers, num_logical_experts = weigth.shape
        =======
            num_layers, num_logical_experts = weight.shape  # fixed
        >>>>>>> REPLACE
    """)
    result = api.evaluate_patch(patch, evaluator=small)
    assert result.status == "apply_error" and result.combined_score == 0
    assert "block 1" in result.error and "closest" in result.error.lower()


def test_the_first_stage_check_imports_and_validates_one_plan_without_scoring(small):
    passed = api.check_program(SEED_PROGRAM, evaluator=small)
    assert passed.ok and passed.combined_score == 0 and passed.time_ms is None
    broken = api.check_program("def rebalance_experts(:\n    pass\n", evaluator=small)
    assert broken.status == "import_error" and "SyntaxError" in broken.error
    dropped = api.check_program(DROPS_AN_EXPERT, evaluator=small)
    assert dropped.status == "invalid_output" and dropped.violations


def test_threads_share_the_evaluator_but_never_run_two_candidates_at_once(shared, tmp_path):
    programs = [stamping_program(tmp_path, name) for name in ("first", "second", "third")]
    results: dict[str, Result] = {}

    def evaluate(program: Path) -> None:
        results[program.stem] = api.evaluate_program(program)

    threads = [threading.Thread(target=evaluate, args=(program,)) for program in programs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.ok for result in results.values()), {k: r.error for k, r in results.items()}
    spans = [span(result.stdout) for result in results.values()]
    for index, first in enumerate(spans):
        for second in spans[index + 1:]:
            assert_apart(first, second)


def test_asyncio_callers_await_results_together(shared):
    async def both() -> list[Result]:
        return await asyncio.gather(api.evaluate_program_async(SEED_PROGRAM),
                                    api.evaluate_patch_async("no blocks in this answer"))

    good, bad = asyncio.run(both())
    assert good.ok and bad.status == "apply_error"


def test_configuring_again_with_equal_values_keeps_the_warm_evaluator(shared):
    same_trace_rebuilt = generate_trace(SyntheticConfig.for_problem(SMALL, num_windows=6), seed=11)
    api.configure(trace=same_trace_rebuilt, settings=SMALL_SETTINGS, device="cpu")
    assert api.shared_evaluator() is shared
    other_trace = generate_trace(SyntheticConfig.for_problem(SMALL, num_windows=6), seed=12)
    api.configure(trace=other_trace, settings=SMALL_SETTINGS, device="cpu")
    try:
        assert api.shared_evaluator() is not shared
    finally:
        api.configure(trace=SMALL_TRACE, settings=SMALL_SETTINGS, device="cpu")


def test_unless_configured_otherwise_candidates_score_on_a_secret_trace(shared, monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, "k" * 32)
    api.configure(settings=SMALL_SETTINGS, device="cpu")
    try:
        trace = api.shared_evaluator().trace
    finally:
        api.configure(trace=SMALL_TRACE, settings=SMALL_SETTINGS, device="cpu")
    assert trace.source == "holdout" and trace.digest == holdout_trace(SMALL, "k" * 32).digest


def test_evaluators_in_separate_processes_take_turns_on_the_device(tmp_path):
    environment = {**os.environ, "EPLB_EVALUATOR_CACHE": str(tmp_path / "cache")}
    programs = [stamping_program(tmp_path, name) for name in ("left", "right")]
    runs = [
        subprocess.Popen([sys.executable, "-m", "evaluator", "evaluate", str(program), "--device", "cpu", "--json",
                          *SMALL_OPTIONS], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for program in programs
    ]
    printed = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, stdout + stderr
        printed.append(json.loads(stdout)["stdout"])
    assert_apart(*map(span, printed))
