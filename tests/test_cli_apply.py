"""`python -m evaluator apply` through a real subprocess, as a loop or a person runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator import apply_patch
from evaluator.paths import PROJECT_ROOT, SEED_PROGRAM
from evaluator.store import CandidateStore, sha256_text

SEED_PATCH = PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff"
MALFORMED = sorted((Path(__file__).parent / "fixtures" / "malformed_patches").glob("*"))

SMALL_PATCH = """<NAME>
fewer_asserts
</NAME>
<DESCRIPTION>
Drop a redundant assertion.
</DESCRIPTION>
<DIFF>
<<<<<<< SEARCH
    num_redundant = num_phy - num_log
    assert num_redundant >= 0
=======
    num_redundant = num_phy - num_log
>>>>>>> REPLACE
</DIFF>
"""


def evaluator(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "evaluator", *args],
        cwd=cwd,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result


def stored(store: Path) -> list[Path]:
    """The candidate folders in `store` (not the lineage repository beside them)."""
    return [candidate.path for candidate in CandidateStore(store).candidates()]


def test_apply_writes_the_candidate_under_candidates(tmp_path):
    result = evaluator("apply", str(SEED_PATCH), "--no-evaluate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [folder] = stored(tmp_path / "candidates")
    program = (folder / "program.py").read_text()
    assert program == apply_patch(SEED_PROGRAM.read_text(), SEED_PATCH.read_text())
    assert (folder / "patch.diff").read_bytes() == SEED_PATCH.read_bytes()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["id"] == folder.name and folder.name in result.stdout
    assert meta["name"] == "vectorized_packing_and_replication"
    assert meta["description"].startswith("1.  **Vectorized `balanced_packing`**")
    assert meta["program_sha256"] == sha256_text(program)
    assert meta["parent"] == {"kind": "seed", "path": "seeds/eplb.py", "sha256": sha256_text(SEED_PROGRAM.read_text())}
    assert [block["match"] for block in meta["blocks"]] == ["exact"] * 3


def test_applying_the_same_patch_twice_is_recognised(tmp_path):
    first = evaluator("apply", str(SEED_PATCH), "--json", "--no-evaluate", cwd=tmp_path)
    second = evaluator("apply", str(SEED_PATCH), "--json", "--no-evaluate", cwd=tmp_path)
    assert json.loads(first.stdout)["created"] is True
    assert json.loads(second.stdout)["created"] is False
    assert json.loads(first.stdout)["candidate"]["id"] == json.loads(second.stdout)["candidate"]["id"]
    assert len(stored(tmp_path / "candidates")) == 1


SMALL_PROBLEM = ("--layers", "4", "--experts", "64", "--replicas", "72", "--nodes", "2", "--gpus", "8")


def test_apply_evaluates_the_candidate_and_keeps_the_result(tmp_path):
    result = evaluator("apply", str(SEED_PATCH), "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "ok" and reply["result"]["status"] == "ok"
    assert reply["result"]["balancedness_score"] == reply["result"]["seed_balancedness"]
    assert reply["result"]["workload"]["problem"]["num_layers"] == 4
    [kept] = (tmp_path / "candidates" / reply["candidate"]["id"] / "results").iterdir()
    assert json.loads(kept.read_text()) == reply["result"]
    assert "note: no GPU found" in result.stderr or reply["result"]["device"] == "cuda"


def test_a_candidate_that_fails_its_evaluation_exits_4_and_its_result_is_reused(tmp_path):
    (tmp_path / "raises.diff").write_text(SMALL_PATCH.replace(
        "    num_redundant = num_phy - num_log\n>>>>>>> REPLACE",
        "    raise RuntimeError('no plan today')\n>>>>>>> REPLACE",
    ))
    result = evaluator("apply", "raises.diff", *SMALL_PROBLEM, cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert ": exception" in result.stdout and "RuntimeError: no plan today" in result.stdout
    [folder] = stored(tmp_path / "candidates")
    [kept] = (folder / "results").iterdir()
    failed = json.loads(kept.read_text())
    assert failed["status"] == "exception" and failed["device"] and failed["card"] and failed["software"]
    # the same program on the same workload, device and software fails the same way: its result is reused
    again = evaluator("apply", "raises.diff", "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert again.returncode == 4, again.stderr
    assert json.loads(again.stdout)["reused"] is True and json.loads(again.stdout)["result"] == failed
    assert len(list((folder / "results").iterdir())) == 1


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path):
    result = evaluator("apply", str(SEED_PATCH), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("--- the seed\n+++ candidate\n")
    assert "-    weight = weight.float().cpu()\n+    weight = weight.float()\n" in result.stdout
    assert not (tmp_path / "candidates").exists()


def test_patch_from_standard_input_with_json(tmp_path):
    result = evaluator("apply", "-", "--json", "--no-evaluate", "--store", "store", cwd=tmp_path, stdin=SEED_PATCH.read_bytes())
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "ok" and reply["candidate"]["name"] == "vectorized_packing_and_replication"
    assert (tmp_path / "store" / reply["candidate"]["id"] / "program.py").is_file()


def test_parent_by_candidate_id_and_by_file(tmp_path):
    (tmp_path / "small.diff").write_text(SMALL_PATCH)
    first = json.loads(evaluator("apply", str(SEED_PATCH), "--json", "--no-evaluate", cwd=tmp_path).stdout)["candidate"]
    child = evaluator("apply", "small.diff", "--parent", first["id"][:6], "--json", "--no-evaluate", cwd=tmp_path)
    assert child.returncode == 0, child.stderr
    child_meta = json.loads(child.stdout)["candidate"]
    assert child_meta["parent"]["kind"] == "candidate" and child_meta["parent"]["id"] == first["id"]
    program = (tmp_path / "candidates" / child_meta["id"] / "program.py").read_text()
    assert "weight = weight.float()\n" in program and "assert num_redundant >= 0" not in program

    from_file = evaluator("apply", "small.diff", "--parent", str(SEED_PROGRAM), "--json", "--no-evaluate", cwd=tmp_path)
    assert json.loads(from_file.stdout)["candidate"]["parent"]["kind"] == "file"


def test_a_parent_whose_evolve_block_is_never_closed_is_bad_input_naming_it(tmp_path):
    (tmp_path / "small.diff").write_text(SMALL_PATCH)
    parent = tmp_path / "parent.py"
    lines = SEED_PROGRAM.read_text().splitlines(keepends=True)
    opened = next(number for number, line in enumerate(lines, start=1) if "EVOLVE-BLOCK-START" in line)
    parent.write_text("".join(line for line in lines if "EVOLVE-BLOCK-END" not in line))
    reply = evaluator("apply", "small.diff", "--parent", str(parent), "--no-evaluate", cwd=tmp_path)
    assert reply.returncode == 2, reply.stderr
    assert f"file {parent}'s EVOLVE-BLOCK opened on line {opened} is never closed" in reply.stderr
    assert not (tmp_path / "candidates").exists()


@pytest.mark.parametrize("patch", MALFORMED, ids=[path.name for path in MALFORMED])
def test_malformed_patches_fail_with_a_patch_error_and_write_nothing(tmp_path, patch):
    result = evaluator("apply", str(patch), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: the patch does not apply to the seed: ")
    assert result.stdout == ""
    assert not (tmp_path / "candidates").exists()


def test_malformed_corpus_is_there():
    assert len(MALFORMED) >= 10


@pytest.mark.parametrize("from_stdin", [False, True], ids=["file", "stdin"])
def test_patch_error_as_json_names_the_block_and_the_closest_text(tmp_path, from_stdin):
    bad = SMALL_PATCH.replace("assert num_redundant >= 0", "assert num_redundant >= 1", 1)
    if from_stdin:  # patch in, score out: how a loop pipes an LLM's answer
        result = evaluator("apply", "-", "--json", cwd=tmp_path, stdin=bad.encode())
    else:
        (tmp_path / "bad.diff").write_text(bad)
        result = evaluator("apply", "bad.diff", "--json", cwd=tmp_path)
    assert result.returncode == 3
    reply = json.loads(result.stdout)
    assert reply["status"] == "apply_error" and reply["error_kind"] == "search_not_found" and reply["block"] == 1
    assert "closest region is program lines" in reply["error"] and "assert num_redundant >= 0" in reply["error"]
    assert not (tmp_path / "candidates").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["apply", "missing.diff"], "cannot read patch missing.diff"),
        (["apply", ".", "--dry-run"], "is a directory"),
        (["apply", "SEED", "--parent", "nothing-here"], "neither a program file nor a stored candidate"),
        (["apply", "SEED", "--parent", "abcdef"], "no candidate 'abcdef'"),
        (["apply"], "the following arguments are required: PATCH"),
        (["apply", "SEED", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, args, message):
    result = evaluator(*[str(SEED_PATCH) if arg == "SEED" else arg for arg in args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "candidates").exists()
