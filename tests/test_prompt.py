"""The task and a program's next-step prompt: rendered from the evaluator's real settings, in the answer format the
patch parser reads, with the program's latest result and its ancestors, and templates a user may override."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from evaluator.eplb.contract import INVARIANTS
from evaluator.eplb.problem import Problem
from evaluator.evaluation import Result, Settings
from evaluator.evaluation.timing import TimingSettings
from evaluator.exitcodes import ExitCode
from evaluator.patch import parse_patch
from evaluator.paths import SEED_PROGRAM
from evaluator.prompt import render_task
from evaluator.sandbox import Limits
from evaluator.status import Status
from evaluator.store import CandidateStore

ROOT = Path(__file__).resolve().parents[1]


def prompt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "prompt", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_task_says_the_settings_it_is_scored_with():
    problem = Problem(num_layers=6, num_experts=32, num_replicas=48, num_groups=4, num_nodes=2, num_gpus=8)
    settings = Settings(problem=problem, timeout_s=77, limits=Limits(memory_mb=1234, gpu_memory_mb=2345),
                        freshness_tolerance=0.07,
                        timing=TimingSettings(call_limit_factor=6, first_call_limit_s=13))
    task = render_task(settings)
    for said in ("L = 6 layers, E = 32 logical experts in 4 groups", "R = num_replicas = 48 physical slots",
                 "8 GPUs (6 slots each) in num_nodes = 2 nodes", "1 <= X <= 17", "tolerance 0.07",
                 "A call may take 6 times", "the first call 13 s", "the whole evaluation 77 s", "at most\n1234 MiB",
                 "2345 MiB of GPU memory",
                 "rebalance_experts, run_eplb, torch"):
        assert said in task, said
    assert all(f"`{invariant.id}`: {invariant.meaning}" in task for invariant in INVARIANTS)


def test_the_answer_form_each_format_asks_for_is_what_apply_reads():
    for answer_format in ("plain", "openevolve", "shinka"):
        task = render_task(Settings(), answer_format)
        example = task.split("## Your answer\n", 1)[1].split("\n\n", 1)[1].rsplit("\n\nEach SEARCH text", 1)[0]
        patch = parse_patch(example)
        assert patch.format == "edits" and len(patch.edits) == 1, answer_format
        assert patch.edits[0].search == "lines copied exactly from the current program\n"
        assert (patch.name == "a_short_name_for_the_change") == (answer_format == "shinka")


def stored(tmp_path: Path) -> tuple[Path, str, str]:
    """A store holding a child of the seed (evaluated: an exception) and its own child (not evaluated)."""
    store = CandidateStore(tmp_path / "candidates")
    seed = SEED_PROGRAM.read_text()
    parent, _ = store.add(seed.replace("# EVOLVE-BLOCK-END", "# parent\n# EVOLVE-BLOCK-END"), None,
                          {"name": "the_parent", "parent": {"kind": "seed", "sha256": "x"}})
    parent.add_result(dataclasses.asdict(Result(Status.EXCEPTION, "rebalance_experts raised ValueError: out of slots")))
    child, _ = store.add(seed.replace("# EVOLVE-BLOCK-END", "# child\n# EVOLVE-BLOCK-END"), None,
                         {"name": "the_child", "parent": {"kind": "candidate", "id": parent.id, "sha256": "y"}})
    return store.root, parent.id, child.id


def test_a_stored_candidates_prompt_holds_its_program_result_and_ancestors(tmp_path):
    store, parent, child = stored(tmp_path)
    shown = prompt(parent[:6], "--store", str(store), cwd=tmp_path)
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert f"# The current program ({parent} the_parent)" in shown.stdout and "# parent" in shown.stdout
    assert "status: exception" in shown.stdout and "| rebalance_experts raised ValueError: out of slots" in shown.stdout
    assert "# Its ancestors" not in shown.stdout  # a child of the seed
    child_prompt = json.loads(prompt(child, "--store", str(store), "--json", "--format", "shinka",
                                     cwd=tmp_path).stdout)
    assert child_prompt["program"] == f"{child} the_child" and child_prompt["format"] == "shinka"
    assert "Not evaluated yet." in child_prompt["prompt"] and "<NAME>" in child_prompt["prompt"]
    assert f"- {parent} the_parent: exception" in child_prompt["prompt"]


def test_templates_of_ones_own_replace_the_packages_by_name(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "task.md.j2").write_text("Balance {{ problem.num_experts }} experts; answer in {{ format }}.\n")
    shown = prompt(str(SEED_PROGRAM), "--templates", str(folder), cwd=tmp_path)
    assert shown.returncode == ExitCode.OK, shown.stderr
    assert shown.stdout.startswith("Balance 256 experts; answer in plain.\n")  # the prompt includes the user's task
    assert "EVOLVE-BLOCK-START" in shown.stdout and "Not evaluated yet." in shown.stdout


def test_bad_input_is_refused_with_what_and_where(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "task.md.j2").write_text("line one\n{% if %}\n")
    broken = prompt("--task", "--templates", str(folder), cwd=tmp_path)
    assert broken.returncode == ExitCode.BAD_INPUT and "task.md.j2, line 2" in broken.stderr
    for args, said in ((["--task", "--templates", str(tmp_path / "none")], "not a folder"),
                       ([str(SEED_PROGRAM), "--task"], "either a candidate's id or a program file"),
                       (["abcd", "--store", str(tmp_path / "empty")], "neither a program file nor a stored candidate")):
        run = prompt(*args, cwd=tmp_path)
        assert run.returncode == ExitCode.BAD_INPUT and said in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
