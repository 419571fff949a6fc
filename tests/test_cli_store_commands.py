"""The store's commands through real subprocesses: `show`, `diff`, `export`, `evaluate ID`, `list --trace`, `lineage`'s
scores, the summary after `evaluate` of several programs, and progress on a terminal only."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from small_problem import SMALL_OPTIONS
from test_cli_accept_list import SEED_PATCH, SMALL, evaluator, fake_result, result_files, stored_seed_patch

from evaluator.commands.workload import default_trace_for
from evaluator.eplb.trace_file import load_trace_file
from evaluator.evaluation.result import workload_summary
from evaluator.exitcodes import ExitCode
from evaluator.paths import SEED_PROGRAM
from evaluator.store import CandidateStore, StoredCandidate, sha256_text

# a name and texts a hostile candidate could give: escape sequences, a bidirectional override, rich markup and an
# emoji code, CSV's separators
HOSTILE = "[bold red]evil[/bold red] :smile: \x1b[2J\u202e, \"quoted\"\nsecond line"
SEED = {"kind": "seed", "path": "seeds/eplb.py"}


def add(root: Path, name: str, parent: dict | None = None, description: str = "") -> StoredCandidate:
    program = f"# {name}\n"
    meta = {"name": name, "description": description, "parent": parent or SEED, "program_sha256": sha256_text(program)}
    return CandidateStore(root).add(program, None, meta)[0]


def json_of(*args: str, cwd: Path) -> object:
    reply = evaluator(*args, "--json", cwd=cwd)
    assert reply.returncode == 0, reply.stderr
    return json.loads(reply.stdout)


def ids_sharing_a_prefix() -> tuple[str, str]:
    """Two programs whose ids share their first 4 hex digits."""
    seen: dict[str, str] = {}
    for number in range(100_000):
        program = f"# {number}\n"
        prefix = hashlib.sha256(program.encode()).hexdigest()[:4]
        if prefix in seen:
            return seen[prefix], program
        seen[prefix] = program
    raise AssertionError("no two ids share a prefix")


# --- show ------------------------------------------------------------------------------------------------

def test_show_gives_the_metadata_each_result_and_the_baseline(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    baseline = fake_result(combined=0.45)
    candidate.add_result({**baseline, "speedup_interval": [5.9, 6.7]})
    candidate.add_result(fake_result(combined=0.3, problem=SMALL))
    candidate.add_result(fake_result("timeout", source="holdout"))
    CandidateStore(tmp_path / "candidates").accept(candidate, {**baseline, "speedup_interval": [5.9, 6.7]})

    reply = evaluator("show", candidate.id[:5], cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    text = reply.stdout
    assert f"candidate  {candidate.id}" in text and "vectorized_packing_and_replication" in text
    assert "parent     seed" in text and "description:" in text
    assert "baseline   accepted" in text and "speedup 6.30x (5.90 to 6.70)" in text
    rows = [line for line in text.splitlines() if "cpu (" in line and not line.startswith(("baseline", "  |"))]
    assert len(rows) == 3
    assert rows[0].startswith("*") and "default" in rows[0] and "0.4500" in rows[0] and "(5.90 to 6.70)" in rows[0]
    assert "default layers=4 experts=64 replicas=72 nodes=2 gpus=8" in rows[1] and "0.3000" in rows[1]
    assert "holdout" in rows[2] and "timeout" in rows[2]
    assert "latest result's error:\n  | timeout: made up" in text

    shown = json_of("show", candidate.id, cwd=tmp_path)
    assert shown["candidate"]["id"] == candidate.id and shown["candidate"]["parent"]["kind"] == "seed"
    assert shown["acceptance"]["result"]["combined_score"] == 0.45
    assert [entry["trace"] for entry in shown["results"]] == [
        "default", "default layers=4 experts=64 replicas=72 nodes=2 gpus=8", "holdout"]
    assert [entry["file"] for entry in shown["results"]] == [path.name for path in result_files(candidate)]
    assert shown["results"][2]["result"] == json.loads(result_files(candidate)[2].read_text())
    assert all(entry["measured_at"].endswith("+00:00") for entry in shown["results"])


def test_show_of_a_candidate_never_evaluated(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    reply = evaluator("show", candidate.id, cwd=tmp_path)
    assert reply.returncode == 0 and f"no results yet: `python -m evaluator evaluate {candidate.id}`" in reply.stdout
    assert json_of("show", candidate.id, cwd=tmp_path)["results"] == []


def test_a_hostile_name_description_and_error_are_shown_inert(tmp_path):
    store = tmp_path / "store"
    parent = add(store, "parent")
    hostile = add(store, HOSTILE, {"kind": "candidate", "id": parent.id}, description=HOSTILE)
    hostile.add_result({**fake_result("exception"), "error": HOSTILE, "stdout": HOSTILE})
    for command in (("show", hostile.id), ("list",)):
        reply = evaluator(*command, "--store", "store", cwd=tmp_path)
        assert reply.returncode == 0, reply.stderr
        assert not any(character in reply.stdout for character in "\x1b\u202e")
        assert "[bold red]evil[/bold red] :smile: \\x1b[2J\\u202e" in reply.stdout  # markup and codes as written
    assert json_of("show", hostile.id, "--store", "store", cwd=tmp_path)["candidate"]["name"] == HOSTILE


# --- ids -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["show", "ID"], ["diff", "ID"], ["lineage", "ID"], ["list", "--parent", "ID"],
                                     ["evaluate", "ID", "--device", "cpu"]])
def test_an_ambiguous_or_unknown_id_is_named_with_exit_2(tmp_path, command):
    store = CandidateStore(tmp_path / "candidates")
    first, second = (store.add(program, None, {"name": "twin"})[0] for program in ids_sharing_a_prefix())
    prefix = first.id[:4]
    reply = evaluator(*(prefix if part == "ID" else part for part in command), cwd=tmp_path)
    assert reply.returncode == ExitCode.BAD_INPUT, reply.stderr
    assert f"candidate id {prefix!r} is ambiguous" in reply.stderr and first.id in reply.stderr
    assert second.id in reply.stderr and "Traceback" not in reply.stderr
    reply = evaluator(*("beef" if part == "ID" else part for part in command), cwd=tmp_path)
    assert reply.returncode == ExitCode.BAD_INPUT and "no candidate 'beef'" in reply.stderr


# --- diff ------------------------------------------------------------------------------------------------

def test_diff_against_the_seed_a_program_file_and_another_candidate(tmp_path):
    from_seed = stored_seed_patch(tmp_path)
    seed_diff = evaluator("diff", from_seed.id[:6], cwd=tmp_path)
    assert seed_diff.returncode == 0, seed_diff.stderr
    assert seed_diff.stdout.startswith(f"--- seed\n+++ candidate {from_seed.id}\n@@")
    assert "+    device = weight.device\n" in seed_diff.stdout

    parent_file = tmp_path / "parent.py"
    parent_file.write_text(SEED_PROGRAM.read_text() + "\n# a parent of my own\n")
    applied = evaluator("apply", str(SEED_PATCH), "--parent", "parent.py", "--no-evaluate", "--json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    from_file = json.loads(applied.stdout)["candidate"]["id"]
    file_diff = evaluator("diff", from_file, cwd=tmp_path)
    assert file_diff.returncode == 0, file_diff.stderr
    assert file_diff.stdout.split("\n", 2)[:2] == ["--- file parent.py", f"+++ candidate {from_file}"]
    assert file_diff.stdout.count("\n@@") == seed_diff.stdout.count("\n@@")

    between = evaluator("diff", from_file, from_seed.id, cwd=tmp_path)
    assert between.returncode == 0, between.stderr
    assert between.stdout.endswith("+\n+# a parent of my own\n")
    assert between.stdout.startswith(f"--- candidate {from_seed.id}\n+++ candidate {from_file}\n")

    parent_file.write_text("# edited since\n")
    changed = evaluator("diff", from_file, cwd=tmp_path)
    assert changed.returncode == ExitCode.BAD_INPUT and "has changed since the candidate was made" in changed.stderr
    assert changed.stdout == ""


# --- list --trace ----------------------------------------------------------------------------------------

SMALL_LABEL = "default layers=4 experts=64 replicas=72 nodes=2 gpus=8"  # the default trace of another shape


def traced_store(root: Path) -> dict[str, StoredCandidate]:
    made = {name: add(root, name) for name in ("both", "held", "plain", "low", "none")}
    made["both"].add_result(fake_result(combined=0.5))
    made["both"].add_result(fake_result(combined=0.9, source="holdout"))
    made["held"].add_result(fake_result(combined=0.4, source="holdout"))
    made["plain"].add_result(fake_result(combined=0.6))
    made["plain"].add_result(fake_result(combined=0.95, problem=SMALL))
    made["low"].add_result(fake_result(combined=0.1))
    return made


def test_list_trace_keeps_results_of_that_trace_only(tmp_path):
    traced_store(tmp_path / "store")
    held = json_of("list", "--store", "store", "--trace", "holdout", cwd=tmp_path)
    assert [(row["name"], row["combined_score"], row["trace"]) for row in held[:2]] == [
        ("both", 0.9, "holdout"), ("held", 0.4, "holdout")]
    assert {row["name"]: (row["status"], row["trace"]) for row in held[2:]} == {
        name: ("unevaluated", None) for name in ("plain", "low", "none")}
    default = json_of("list", "--store", "store", "--trace", "default", cwd=tmp_path)
    assert [(row["name"], row["combined_score"], row["trace"]) for row in default[:3]] == [
        ("both", 0.5, "default"), ("low", 0.1, "default"), ("plain", 0.95, SMALL_LABEL)]
    assert {row["name"]: row["status"] for row in default[3:]} == {"held": "unevaluated", "none": "unevaluated"}
    table = evaluator("list", "--store", "store", "--trace", "holdout", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, first, *_ = table.stdout.splitlines()
    assert header.split()[-2:] == ["trace", "parent"] and first.split()[-3:] == ["6.30x", "holdout", "seed"]


def test_list_ranks_the_results_of_one_trace_together(tmp_path):
    traced_store(tmp_path / "store")
    rows = json_of("list", "--store", "store", cwd=tmp_path)  # each candidate's latest result, whatever its trace
    assert [(row["name"], row["combined_score"], row["trace"]) for row in rows] == [
        ("low", 0.1, "default"), ("both", 0.9, "holdout"), ("held", 0.4, "holdout"), ("plain", 0.95, SMALL_LABEL),
        ("none", None, None)]


def test_list_trace_file_keeps_results_on_its_data_wherever_it_was_read(tmp_path):
    windows = torch.from_numpy(default_trace_for(SMALL).windows[:3].copy())
    trace_file = tmp_path / "trace.json"
    trace_file.write_text(json.dumps({"load_history": [{"logical_expert_load": w} for w in windows.tolist()]}))
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps({"load_history": [{"logical_expert_load": w} for w in (windows + 1).tolist()]}))
    made = {name: add(tmp_path / "store", name) for name in ("on_it", "on_other")}
    for name, path in (("on_it", trace_file), ("on_other", other_file)):
        measured = workload_summary(load_trace_file(str(path), SMALL, 1), SMALL)
        made[name].add_result({**fake_result(problem=SMALL), "workload": measured})
    made["on_it"].add_result(fake_result())  # a later result on the default trace
    copy = tmp_path / "elsewhere" / "copy.json"
    copy.parent.mkdir()
    shutil.copy(trace_file, copy)
    rows = json_of("list", "--store", "store", "--trace", str(copy), cwd=tmp_path)
    assert [(row["name"], row["status"]) for row in rows] == [("on_it", "ok"), ("on_other", "unevaluated")]
    assert rows[0]["trace"].startswith(str(trace_file))
    missing = evaluator("list", "--store", "store", "--trace", "missing.json", cwd=tmp_path)
    assert missing.returncode == ExitCode.BAD_INPUT
    assert "--trace missing.json: neither 'default', 'holdout' nor a trace file" in missing.stderr


# --- lineage ---------------------------------------------------------------------------------------------

def test_lineage_gives_each_step_its_latest_scores(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result(combined=0.45))
    steps = json_of("lineage", candidate.id[:6], cwd=tmp_path)["lineage"]
    assert [step["candidate_id"] for step in steps] == [None, candidate.id]
    assert steps[0]["status"] is None and steps[0]["combined_score"] is None
    assert (steps[1]["status"], steps[1]["combined_score"], steps[1]["trace"]) == ("ok", 0.45, "default")
    text = evaluator("lineage", candidate.id, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    header, root, last = text.stdout.splitlines()
    assert header.split() == ["id", "commit", "name", "status", "combined", "balanced", "speedup", "trace"]
    assert root.split()[0] == "root" and last.split()[0] == candidate.id
    assert last.split()[-5:] == ["ok", "0.4500", "0.8000", "6.30x", "default"]
    held = json_of("lineage", candidate.id, "--trace", "holdout", cwd=tmp_path)["lineage"]
    assert held[1]["status"] == "unevaluated"


# --- export ----------------------------------------------------------------------------------------------

def test_export_csv_and_jsonl_give_every_result_with_its_candidate(tmp_path):
    store = tmp_path / "store"
    parent = add(store, "parent")
    hostile = add(store, HOSTILE, {"kind": "candidate", "id": parent.id})
    stored = [fake_result(combined=0.5), {**fake_result(combined=0.7), "speedup_interval": [6.0, 6.6]}]
    for result in stored:
        parent.add_result(result)
    failed = {**fake_result("exception", source="holdout"), "error": HOSTILE}
    hostile.add_result(failed)

    written = evaluator("export", "--store", "store", "--format", "csv", "--out", "results.csv", cwd=tmp_path)
    assert written.returncode == 0 and written.stdout == "", written.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text(), newline="")))
    assert [row["candidate_id"] for row in rows] == sorted([parent.id] * 2 + [hostile.id])
    by_file = {row["file"]: row for row in rows}
    for path, result in [*zip(result_files(parent), stored), (result_files(hostile)[0], failed)]:
        row = by_file[path.name]
        for field in ("status", "device", "card"):
            assert row[field] == result[field]
        for field in ("combined_score", "balancedness_score", "time_ms"):
            assert float(row[field]) == result[field]
        assert row["speedup"] == ("" if result["speedup"] is None else repr(result["speedup"]))
        assert json.loads(row["speedup_interval"] or "null") == result.get("speedup_interval")
        assert json.loads(row["violations"]) == result["violations"]
        assert row["workload.problem.num_layers"] == str(result["workload"]["problem"]["num_layers"])
        assert row["workload.digest"] == result["workload"]["digest"]
        assert row["software.torch"] == result["software"]["torch"]
    hostile_row = by_file[result_files(hostile)[0].name]
    assert hostile_row["parent"] == parent.id and hostile_row["trace"] == "holdout"
    # text keeps its separators, quotes and lines; its escape sequences are written as escapes
    assert hostile_row["name"] == hostile_row["error"] == HOSTILE.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")

    lines = evaluator("export", "--store", "store", cwd=tmp_path)
    assert lines.returncode == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [record["result"] for record in records if record["candidate_id"] == parent.id] == stored
    [record] = [record for record in records if record["candidate_id"] == hostile.id]
    assert record["name"] == HOSTILE and record["result"] == failed and record["parent"] == parent.id

    held = evaluator("export", "--store", "store", "--trace", "holdout", cwd=tmp_path)
    assert [json.loads(line)["candidate_id"] for line in held.stdout.splitlines()] == [hostile.id]


@pytest.mark.parametrize("out, message", [(".", "not a regular file"), ("/dev/null", "not a regular file"),
                                          ("missing/results.csv", "no folder missing")])
def test_export_refuses_an_output_it_cannot_write_before_writing(tmp_path, out, message):
    add(tmp_path / "store", "one").add_result(fake_result())
    reply = evaluator("export", "--store", "store", "--format", "csv", "--out", out, cwd=tmp_path)
    assert reply.returncode == ExitCode.BAD_INPUT and message in reply.stderr and reply.stdout == ""
    assert Path("/dev/null").is_char_device() and not (tmp_path / "missing").exists()


# --- evaluate ID -----------------------------------------------------------------------------------------

def test_evaluate_by_prefix_keeps_the_result_so_that_accept_works(tmp_path):
    candidate = stored_seed_patch(tmp_path)  # apply --no-evaluate
    refused = evaluator("accept", candidate.id[:6], cwd=tmp_path)
    assert refused.returncode == ExitCode.BAD_INPUT and "has no result on the 'default' trace" in refused.stderr

    reply = evaluator("evaluate", candidate.id[:6], "--device", "cpu", "--json", cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["candidate"] == candidate.id and answer["reused"] is False and answer["status"] == "ok"
    [kept] = result_files(candidate)
    assert {key: value for key, value in answer.items() if key not in ("program", "candidate", "reused")} == \
        json.loads(kept.read_text())
    assert "\x1b" not in reply.stderr and "evaluating" not in reply.stderr  # no progress in a pipe

    again = json.loads(evaluator("evaluate", candidate.id, "--device", "cpu", "--json", cwd=tmp_path).stdout)
    assert again["reused"] is True and result_files(candidate) == [kept]

    accepted = evaluator("accept", candidate.id[:6], cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert candidate.baseline() == json.loads(kept.read_text())


def test_evaluate_of_several_programs_ends_with_a_summary(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    raising = tmp_path / "raising.py"
    raising.write_text("def rebalance_experts(*args):\n    raise RuntimeError('no plan today')\n")
    reply = evaluator("evaluate", candidate.id[:8], "raising.py", "--device", "cpu", *SMALL_OPTIONS, cwd=tmp_path)
    assert reply.returncode == ExitCode.CANDIDATE_FAILED, reply.stderr
    assert "[1/2]" in reply.stderr and "[2/2]" in reply.stderr
    summary = reply.stdout.split("\n\nprogram ", 1)[1].splitlines()
    assert summary[0].split() == ["status", "combined", "balanced", "speedup"]
    assert summary[1].split()[:3] == ["candidate", candidate.id, "ok"]
    assert summary[2].split() == ["raising.py", "exception", "-", "-", "-"]
    assert len(result_files(candidate)) == 1  # kept with the candidate; the file's result is not stored
    as_json = evaluator("evaluate", candidate.id[:8], "--device", "cpu", "--json", *SMALL_OPTIONS, cwd=tmp_path)
    assert json.loads(as_json.stdout)["reused"] is True and "program " not in as_json.stdout


def test_a_file_wins_over_an_id_of_the_same_name(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    (tmp_path / candidate.id[:6]).write_text("def rebalance_experts(*args):\n    return None\n")
    reply = evaluator("evaluate", candidate.id[:6], "--device", "cpu", "--json", *SMALL_OPTIONS, cwd=tmp_path)
    answer = json.loads(reply.stdout)
    assert answer["program"] == candidate.id[:6] and "candidate" not in answer
    assert answer["status"] == "import_error"  # a file without .py is no module: the file was taken
    assert result_files(candidate) == []


# --- progress --------------------------------------------------------------------------------------------

def test_apply_shows_progress_on_a_terminal_and_keeps_standard_output_plain(tmp_path):
    terminal, its_end = pty.openpty()
    environment = {key: value for key, value in os.environ.items() if key not in ("FORCE_COLOR", "NO_COLOR")}
    process = subprocess.Popen([sys.executable, "-m", "evaluator", "apply", str(SEED_PATCH), "--device", "cpu",
                                *SMALL_OPTIONS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=its_end, text=True,
                               env={**environment, "TERM": "xterm"})
    os.close(its_end)
    shown: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(terminal, shown))
    reader.start()
    stdout, _ = process.communicate(timeout=600)
    reader.join(timeout=60)
    os.close(terminal)
    assert process.returncode == 0, b"".join(shown).decode(errors="replace")
    assert "evaluating candidate" in b"".join(shown).decode(errors="replace")
    assert "\x1b" not in stdout and "combined_score" in stdout


def _read_all(descriptor: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        into.append(chunk)


# --- a long or damaged store entry ---------------------------------------------------------------------------


def test_a_long_line_of_a_candidates_text_keeps_its_mark_on_every_line(tmp_path):
    """A forged verdict pushed past the width a console wraps at must still read as the candidate's text."""
    forged = "x " * 600 + "checks.py: ok (the evaluator says this candidate is verified)"
    stored = add(tmp_path / "candidates", "long", description=forged)
    shown = evaluator("show", stored.id, cwd=tmp_path)
    assert shown.returncode == ExitCode.OK, shown.stderr
    lines = shown.stdout.splitlines()
    start = lines.index("description:")
    assert lines[start + 1].startswith("  | ") and lines[start + 1].endswith("verified)")


@pytest.mark.parametrize("damage", ["missing", "not utf-8"])
def test_an_unreadable_program_is_an_error_naming_it_not_a_traceback(tmp_path, damage):
    parent = add(tmp_path / "candidates", "parent")
    child = add(tmp_path / "candidates", "child",
                parent={"kind": "candidate", "id": parent.id, "sha256": parent.meta["program_sha256"]})
    if damage == "missing":
        parent.program_path.unlink()
    else:
        parent.program_path.write_bytes(b"\xff\xfe not text")
    for command in (["diff", child.id], ["report", "--out", str(tmp_path / "report")]):
        reply = evaluator(*command, cwd=tmp_path)
        assert reply.returncode == ExitCode.BAD_INPUT, (command, reply.stderr)
        assert "Traceback" not in reply.stderr and f"candidates/{parent.id}/program.py" in reply.stderr
    assert not (tmp_path / "report").exists()


def test_a_score_edited_into_text_is_shown_as_missing_and_a_trace_without_one_scored_is_reported(tmp_path):
    stored = add(tmp_path / "candidates", "edited")
    stored.add_result({**fake_result(), "status": "ok", "combined_score": "high", "speedup": "fast"})
    for command in (["list"], ["show", stored.id], ["report", "--out", str(tmp_path / "report")]):
        reply = evaluator(*command, cwd=tmp_path)
        assert reply.returncode == ExitCode.OK, (command, reply.stderr)
