"""The ShinkaEvolve adapter: `python -m evaluator shinka` in a real subprocess, its files read back by the real
`shinka.utils.load_results`, and the documented shim run by ShinkaEvolve's own local JobScheduler."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from failing_programs import DROPS_AN_EXPERT, RAISES
from shinka import launch
from shinka.utils import load_results

from evaluator.commands.shinka import SHIM
from evaluator.eplb.holdout import KEY_VARIABLE
from evaluator.exitcodes import ExitCode
from evaluator.loops.shinka_results import INFRA_NOTE, prepare_results_dir
from evaluator.paths import SEED_PROGRAM

# The small CPU problem of tests/test_evaluate.py, as ShinkaEvolve's extra_cmd_args (each becomes --KEY VALUE).
SMALL = {"layers": 6, "experts": 32, "replicas": 48, "groups": 4, "nodes": 2, "gpus": 8,
         "device": "cpu", "timeout": 30, "memory-mb": 1536}
RESULT_FILES = ["correct.json", "metrics.json"]


def options(values: dict[str, object]) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def shinka(program: Path, results_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m evaluator shinka` on `program`, in a subprocess of its own."""
    return shinka_command("--program_path", str(program), "--results_dir", str(results_dir), *extra)


def shinka_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "shinka", *arguments], capture_output=True, text=True,
                          timeout=120)


def written(folder: Path) -> list[str]:
    """Every file under `folder`, temporary ones included."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_the_seed_is_correct_and_scored(tmp_path):
    results_dir = tmp_path / "not" / "yet" / "there"
    run = shinka(SEED_PROGRAM, results_dir, *options(SMALL))
    assert run.returncode == ExitCode.OK, run.stderr
    loaded = load_results(str(results_dir))
    assert loaded["correct"] == {"correct": True, "error": None}
    metrics = loaded["metrics"]
    assert metrics["combined_score"] > 0
    public = metrics["public"]
    assert {"balancedness_score", "speed_score", "speedup", "time_ms", "seed_time_ms"} <= public.keys()
    assert "combined_score" not in public  # ShinkaEvolve shows it on its own line
    assert all(isinstance(value, float) for value in public.values())
    assert metrics["combined_score"] == pytest.approx((public["balancedness_score"] + public["speed_score"]) / 2)
    private = metrics["private"]
    assert private["status"] == "ok" and private["infra_error"] is False
    assert private["device"] == "cpu" and private["software"]["torch"]
    assert private["workload"]["problem"]["num_layers"] == SMALL["layers"]
    assert metrics["text_feedback"].startswith("status: ok")
    assert metrics["text_feedback"] in run.stdout  # what ShinkaEvolve's fix prompts show of a job
    assert written(results_dir) == RESULT_FILES  # no temporary file left behind


def test_a_job_scores_on_a_secret_trace_unless_told_otherwise(tmp_path, monkeypatch):
    def jobs(*folders_and_options: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Jobs side by side, as a loop runs them (they take turns on the device)."""
        with ThreadPoolExecutor(len(folders_and_options)) as pool:
            return list(pool.map(lambda job: shinka(SEED_PROGRAM, tmp_path / job[0], *job[1:], *options(SMALL)),
                                 folders_and_options))

    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    unkeyed = jobs(("unkeyed-0",), ("unkeyed-1",))
    monkeypatch.setenv(KEY_VARIABLE, "k" * 32)
    *keyed, public = jobs(("keyed-0",), ("keyed-1",), ("public", "--default-trace"))
    workloads = {name: [load_results(str(tmp_path / name))["metrics"]["private"]["workload"] for name in names]
                 for name, names in (("unkeyed", ["unkeyed-0", "unkeyed-1"]), ("keyed", ["keyed-0", "keyed-1"]),
                                     ("public", ["public"]))}
    assert all(run.returncode == ExitCode.OK for run in [*unkeyed, *keyed, public])
    assert {workload["source"] for workload in workloads["unkeyed"] + workloads["keyed"]} == {"holdout"}
    assert workloads["unkeyed"][0]["digest"] != workloads["unkeyed"][1]["digest"]  # each job drew its own
    assert all(KEY_VARIABLE in run.stderr for run in unkeyed) and not any(KEY_VARIABLE in run.stderr for run in keyed)
    assert workloads["keyed"][0]["digest"] == workloads["keyed"][1]["digest"]  # every job of the loop: one trace
    assert workloads["public"][0]["source"] == "synthetic(seed=0)"  # the default generator's trace for that shape


@pytest.mark.parametrize(
    "body, status, message",
    [(RAISES, "exception", "ValueError: the packing ran out of slots"),
     (DROPS_AN_EXPERT, "invalid_output", "violation phy2log.coverage")],
    ids=["exception", "invalid-output"],
)
def test_a_failing_program_is_incorrect_and_its_error_names_the_failure(tmp_path, body, status, message):
    program = tmp_path / "main.py"
    program.write_text(body)
    run = shinka(program, tmp_path / "results", *options(SMALL))
    assert run.returncode == ExitCode.CANDIDATE_FAILED, run.stderr
    loaded = load_results(str(tmp_path / "results"))
    assert loaded["correct"]["correct"] is False
    assert loaded["correct"]["error"].startswith(f"{status}: ")
    metrics = loaded["metrics"]
    assert metrics["combined_score"] == 0
    assert metrics["private"]["status"] == status and metrics["private"]["infra_error"] is False
    assert metrics["text_feedback"].startswith(f"status: {status}") and message in metrics["text_feedback"]
    assert message in run.stdout


def test_an_evaluator_failure_says_so_and_exits_with_infra_error(tmp_path):
    # No worker fits in 4 MiB, not even the evaluator's own timing reference: the evaluator fails first.
    run = shinka(SEED_PROGRAM, tmp_path / "results", *options({**SMALL, "memory-mb": 4}))
    assert run.returncode == ExitCode.INFRA_ERROR, run.stderr
    loaded = load_results(str(tmp_path / "results"))
    assert loaded["correct"]["correct"] is False
    assert loaded["correct"]["error"].startswith(f"infra_error: {INFRA_NOTE}")
    metrics = loaded["metrics"]
    assert metrics["private"]["status"] == "infra_error" and metrics["private"]["infra_error"] is True
    assert metrics["text_feedback"].startswith(INFRA_NOTE)
    assert INFRA_NOTE in run.stdout


def test_shinka_runs_the_shim_end_to_end(tmp_path, monkeypatch):
    # As shinka_run does: the shim's text alone in another folder, and a working directory of its own.
    shim = tmp_path / "copied" / "evaluate.py"
    shim.parent.mkdir()
    shim.write_text(SHIM)
    program = tmp_path / "gen_0" / "main.py"
    program.parent.mkdir()
    program.write_text(SEED_PROGRAM.read_text())
    monkeypatch.chdir(tmp_path)
    scheduler = launch.JobScheduler("local", launch.LocalJobConfig(eval_program_path=str(shim), extra_cmd_args=SMALL))
    results, _ = scheduler.run(str(program), str(tmp_path / "gen_0" / "results"))
    assert results["correct"] == {"correct": True, "error": None}, results["stderr_log"]
    assert results["metrics"]["combined_score"] > 0
    assert results["metrics"]["private"]["workload"]["problem"]["num_gpus"] == SMALL["gpus"]
    assert "no GPU found" not in results["stderr_log"]  # --device cpu arrived: the note is for --device auto only
    assert "status: ok" in results["stdout_log"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--program_path", "{tmp}/missing.py", "--results_dir", "{tmp}/results"], "no such program file"),
        (["--program_path", "{tmp}/" + "p" * 300, "--results_dir", "{tmp}/results"], "File name too long"),
        (["--program_path", str(SEED_PROGRAM), "--results_dir", "{tmp}/a-file"], "is a file, not a folder"),
        (["--program_path", str(SEED_PROGRAM), "--results_dir", "{tmp}/a-file/results"], "Not a directory"),
        # extra_cmd_args {holdout: true} arrives as "--holdout True": refused, not taken for something else
        (["--program_path", str(SEED_PROGRAM), "--results_dir", "{tmp}/results", "--holdout", "True"],
         "unrecognized arguments: True"),
        (["--program_path", str(SEED_PROGRAM)], "--results_dir"),
    ],
    ids=["missing-program", "program-name-too-long", "results-dir-is-a-file", "results-dir-under-a-file",
         "flag-with-a-value", "no-results-dir"],
)
def test_a_bad_invocation_fails_clearly_and_writes_nothing(tmp_path, arguments, message):
    (tmp_path / "a-file").write_text("kept\n")
    run = shinka_command(*(argument.format(tmp=tmp_path) for argument in arguments))
    assert run.returncode == ExitCode.BAD_INPUT
    assert message in run.stderr
    assert written(tmp_path) == ["a-file"] and (tmp_path / "a-file").read_text() == "kept\n"


def test_an_earlier_runs_results_are_gone_before_evaluating(tmp_path):
    # Were this run killed (ShinkaEvolve's job time limit), no earlier result could be read as its own.
    (tmp_path / "correct.json").write_text('{"correct": true}')
    (tmp_path / "metrics.json").write_text('{"combined_score": 1.0}')
    (tmp_path / "job_log.out").write_text("ShinkaEvolve's log of this job\n")
    prepare_results_dir(tmp_path)
    assert written(tmp_path) == ["job_log.out"]
    assert load_results(str(tmp_path))["correct"] == {"correct": False}
