"""`python -m evaluator init`: the set-up it writes runs, unchanged, under the real OpenEvolve and ShinkaEvolve against
a stand-in LLM that answers with recorded answers (one of them applies and returns invalid plans): candidates are
scored on the run's secret trace, and the failure's feedback reaches a later prompt. And init's own promises: a new
or empty folder, every file or none, the options and limits carried into the set-up."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from recorded_llm import RecordedLLM, recorded_answers
from small_problem import SMALL, SMALL_OPTIONS, SMALL_SETTINGS

from evaluator.exitcodes import ExitCode
from evaluator.loops.configured import configure_from_options
from evaluator.paths import SEED_PROGRAM
from evaluator.prompt.render import render_task

# the small CPU problem, as init carries it into a set-up
EVALUATION = ["--device", "cpu", *SMALL_OPTIONS, "--timeout", "30", "--memory-mb", "1536"]
# the recorded answer that applies and fails: an invalid plan or an exception, as the secret trace has it
FAILURES = ("invalid_output", "exception")


def init(framework: str, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "init", framework, str(folder), *options],
                          capture_output=True, text=True, timeout=120)


def run_set_up(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(folder / "run.sh")], capture_output=True, text=True, timeout=900)


def test_openevolve_runs_the_set_up_init_wrote(tmp_path):
    folder = tmp_path / "eplb-openevolve"
    # the second answer fails: OpenEvolve puts its child alone on an island of its own, so it is a later parent
    with RecordedLLM(recorded_answers("000", "137", "012", "028", "081", "161")) as llm:
        made = init("openevolve", folder, "--model", "recorded", "--api-base", llm.url, "--iterations", "7",
                    "--parallel", "1", *EVALUATION)
        assert made.returncode == ExitCode.OK, made.stderr
        run = run_set_up(folder)
    assert run.returncode == 0, run.stderr[-3000:]
    programs = [json.loads(Path(path).read_text()) for path in glob.glob(str(folder / "output/checkpoints/*/programs/*.json"))]
    scores = sorted(program["metrics"]["combined_score"] for program in programs if program["generation"] > 0)
    assert scores[0] == 0 and scores[-1] > 0  # the failing child, and children scored in full
    assert render_task(SMALL_SETTINGS, "openevolve").splitlines()[0] in llm.patch_prompts[0]
    told = [prompt for prompt in llm.patch_prompts[2:]
            if "### feedback" in prompt and any(f"status: {status}" in prompt for status in FAILURES)]
    assert told and "REDACTED" not in told[0]
    assert sorted(path.name for path in folder.iterdir()) == [".gitignore", "config.yaml", "evaluate.py",
                                                              "initial_program.py", "output", "run.sh"]


def test_shinka_runs_the_set_up_init_wrote(tmp_path):
    folder = tmp_path / "eplb-shinka"
    with RecordedLLM(recorded_answers("137", "000", "012")) as llm:
        made = init("shinka", folder, "--model", "recorded", "--api-base", llm.url, "--iterations", "3", "--parallel",
                    "1", *EVALUATION)
        assert made.returncode == ExitCode.OK, made.stderr
        run = run_set_up(folder)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(Path(path).read_text())
               for path in sorted(glob.glob(str(folder / "results/gen_*/results/metrics.json")))]
    assert [item["private"]["status"] in FAILURES for item in metrics] == [False, True, False]
    assert metrics[0]["combined_score"] > 0 and metrics[2]["combined_score"] > 0
    workloads = [item["private"]["workload"] for item in metrics]
    assert {workload["source"] for workload in workloads} == {"holdout"}
    assert len({workload["digest"] for workload in workloads}) == 1  # every job: the one trace of the run's key
    failed_at = next(index for index, prompt in enumerate(llm.prompts) if prompt == llm.patch_prompts[0])
    feedback = metrics[1]["text_feedback"].splitlines()[2]  # the first line of its error
    assert any(feedback in prompt for prompt in llm.prompts[failed_at + 1:])  # the review of the failing program
    assert render_task(SMALL_SETTINGS, "shinka").splitlines()[0] in llm.patch_prompts[0]


@pytest.mark.parametrize("framework", ["openevolve", "shinka"])
def test_the_set_up_carries_the_options_and_limits_that_agree_with_them(tmp_path, framework):
    folder = tmp_path / "set-up"
    made = init(framework, folder, "--parallel", "3", "--timeout", "90", "--gpu-memory-mb", "2048", *SMALL_OPTIONS)
    assert made.returncode == ExitCode.OK, made.stderr
    written = {path.name: path.read_text() for path in folder.iterdir()}
    assert written["initial_program.py" if framework == "openevolve" else "initial.py"] == SEED_PROGRAM.read_text()
    options = ["--timeout", "90.0", "--gpu-memory-mb", "2048", *SMALL_OPTIONS]
    assert f"OPTIONS = {json.dumps(options)}" in written["evaluate.py"]
    assert "EPLB_EVALUATOR_HOLDOUT_KEY" in written["run.sh"] and "token_hex" in written["run.sh"]
    if framework == "openevolve":
        config = yaml.safe_load(written["config.yaml"])
        deadline = int(written["run.sh"].split("EPLB_EVALUATOR_STAGE2_DEADLINE_S=")[1].split()[0])
        assert 3 * 90 <= deadline < config["evaluator"]["timeout"]
        assert config["max_code_length"] > len(SEED_PROGRAM.read_text())
        system_message = config["prompt"]["system_message"]
    else:
        config = yaml.safe_load(written["shinka.yaml"])
        hours, minutes, seconds = map(int, config["job"]["time"].split(":"))
        assert hours * 3600 + minutes * 60 + seconds > 90 and config["max_evaluation_jobs"] == 3
        system_message = config["evo"]["task_sys_msg"]
    assert "at most\n1536" not in system_message and "2048 MiB of GPU memory" in system_message
    assert "whole evaluation 90 s" in system_message and "R = num_replicas = 48" in system_message


def test_the_options_written_configure_the_evaluator_they_describe(tmp_path, monkeypatch):
    from evaluator import api

    monkeypatch.setenv("EPLB_EVALUATOR_HOLDOUT_KEY", "k" * 32)
    try:
        configure_from_options(["--timeout", "45", *SMALL_OPTIONS, "--device", "cpu"])
        configured = api._configuration
        assert configured.settings.timeout_s == 45 and configured.settings.problem == SMALL
        assert configured.trace.source == "holdout" and configured.device == "cpu"
        with pytest.raises(ValueError, match="--timeout"):
            configure_from_options(["--timeout", "never"])
    finally:
        api.configure()


@pytest.mark.parametrize("occupied", ["a file", "a folder with a file"])
def test_init_overwrites_nothing(tmp_path, occupied):
    folder = tmp_path / "set-up"
    if occupied == "a file":
        folder.write_text("kept\n")
    else:
        folder.mkdir()
        (folder / "notes.txt").write_text("kept\n")
    made = init("openevolve", folder)
    assert made.returncode == ExitCode.BAD_INPUT and "not an empty folder" in made.stderr
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == sorted(
        ["set-up"] if occupied == "a file" else ["set-up", "set-up/notes.txt"])


def test_a_bad_option_writes_nothing(tmp_path):
    made = init("shinka", tmp_path / "set-up", "--workload", str(tmp_path / "missing.json"))
    assert made.returncode == ExitCode.BAD_INPUT and "missing.json" in made.stderr
    assert list(tmp_path.iterdir()) == []
