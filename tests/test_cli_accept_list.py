"""`apply` reusing stored results, `apply --accept`, `accept` and `list`, through real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluator.commands.workload import default_trace_for
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace_file import load_trace_file
from evaluator.evaluation import Result
from evaluator.evaluation.lanes import first_lane_card
from evaluator.evaluation.result import workload_summary
from evaluator.paths import PROJECT_ROOT
from evaluator.software import software
from evaluator.store import CandidateStore, StoredCandidate, sha256_text

SEED_PATCH = PROJECT_ROOT / "patches" / "vectorized_packing_and_replication.diff"
SMALL_PROBLEM = ("--layers", "4", "--experts", "64", "--replicas", "72", "--nodes", "2", "--gpus", "8")
SMALL = Problem(num_layers=4, num_experts=64, num_replicas=72, num_nodes=2, num_gpus=8)
DEFAULT = Problem()


def evaluator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


def workload_of(problem: Problem) -> dict:
    return workload_summary(default_trace_for(problem), problem)


def fake_result(status: str = "ok", combined: float = 0.5, problem: Problem = DEFAULT, card: str | None = None,
                other_software: dict | None = None, **workload: object) -> dict:
    """A made-up result, measured where `apply` would measure on this machine unless `card` or `other_software`
    (versions in a result's `software`) say otherwise."""
    ok = status == "ok"
    device, card_here = first_lane_card("auto", None)
    return Result(status, error=None if ok else f"{status}: made up", balancedness_score=0.8 if ok else 0.0,
                  speed_score=0.2 if ok else 0.0, combined_score=combined if ok else 0.0, speedup=6.3 if ok else None,
                  time_ms=1.0, seed_time_ms=6.3, slot_balancedness=0.3, reference_balancedness=0.9,
                  seed_balancedness=0.8, device=device, card=card or card_here,
                  software={**software(), **(other_software or {})},
                  workload={**workload_of(problem), **workload}).to_json()


def stored_seed_patch(cwd: Path) -> StoredCandidate:
    reply = evaluator("apply", str(SEED_PATCH), "--json", "--no-evaluate", cwd=cwd)
    assert reply.returncode == 0, reply.stderr
    return CandidateStore(cwd / "candidates").get(json.loads(reply.stdout)["candidate"]["id"])


def result_files(candidate: StoredCandidate) -> list[Path]:
    folder = candidate.path / "results"
    return sorted(folder.iterdir()) if folder.exists() else []


# --- apply: reuse ----------------------------------------------------------------------------------------

def test_applying_the_same_patch_twice_reuses_the_result_and_force_evaluates_again(tmp_path):
    first = evaluator("apply", str(SEED_PATCH), "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    first_reply = json.loads(first.stdout)
    assert first_reply["reused"] is False and first_reply["created"] is True
    candidate = CandidateStore(tmp_path / "candidates").get(first_reply["candidate"]["id"])
    [kept] = result_files(candidate)

    second = evaluator("apply", str(SEED_PATCH), "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    second_reply = json.loads(second.stdout)
    assert second_reply["reused"] is True and second_reply["created"] is False
    assert second_reply["result"] == first_reply["result"]
    assert result_files(candidate) == [kept]
    assert len(list(CandidateStore(tmp_path / "candidates").candidates())) == 1

    text = evaluator("apply", str(SEED_PATCH), *SMALL_PROBLEM, cwd=tmp_path)
    assert text.returncode == 0 and "reused (--force evaluates again)" in text.stdout
    assert "combined_score" in text.stdout and result_files(candidate) == [kept]

    forced = evaluator("apply", str(SEED_PATCH), "--json", "--force", *SMALL_PROBLEM, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["reused"] is False
    assert len(result_files(candidate)) == 2


def test_a_result_for_another_workload_or_a_held_out_trace_is_never_reused(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result(problem=SMALL, source="holdout"))
    candidate.add_result(fake_result(problem=Problem(num_layers=5, num_experts=64, num_replicas=72, num_nodes=2,
                                                     num_gpus=8)))
    reply = evaluator("apply", str(SEED_PATCH), "--json", "--holdout", *SMALL_PROBLEM, cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is False and answer["result"]["workload"]["source"] == "holdout"
    assert answer["result"]["workload"]["problem"]["num_layers"] == 4
    assert len(result_files(candidate)) == 3


def test_a_result_on_a_trace_file_is_reused_for_the_same_data_only(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    # the default trace's first windows, two steps each: on uniformly random loads honest plans for nearby inputs
    # differ by more than the freshness check's tolerance, which is set for realistic loads
    windows = torch.from_numpy(default_trace_for(SMALL).windows[:3].copy())
    halves = windows // 2
    steps = torch.stack([halves, windows - halves], dim=1).reshape(6, SMALL.num_layers, SMALL.num_experts)
    trace_file = tmp_path / "trace.json"

    def write_trace() -> None:
        trace_file.write_text(json.dumps({"load_history": [{"logical_expert_load": step} for step in steps.tolist()]}))

    write_trace()
    measured = load_trace_file(str(trace_file), SMALL, 2)
    candidate.add_result({**fake_result(problem=SMALL), "workload": workload_summary(measured, SMALL)})
    options = ("apply", str(SEED_PATCH), "--json", "--workload", str(trace_file), "--window", "2", *SMALL_PROBLEM)
    reply = evaluator(*options, cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    assert json.loads(reply.stdout)["reused"] is True

    steps[0, 0, 0] += 1  # the same path, the same shape, other loads
    write_trace()
    reply = evaluator(*options, cwd=tmp_path)
    assert reply.returncode == 0, reply.stdout + reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is False
    assert answer["result"]["workload"]["digest"] == load_trace_file(str(trace_file), SMALL, 2).digest
    assert answer["result"]["workload"]["digest"] != measured.digest


def test_a_result_measured_on_another_card_with_other_software_is_never_reused(tmp_path):
    """A newcomer with a GPU who runs the README's `apply` gets a result measured on that GPU, not the one a CPU
    machine stored with the candidate; another torch, CUDA or Python measures again, and so does an evaluator
    whose code changed, even at the same version number."""
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result(problem=SMALL, card="a card of another machine"))
    for other in ({"torch": "1.0.0"}, {"cuda": "9.0"}, {"python": "3.0.0"}, {"evaluator_digest": "0" * 16}):
        candidate.add_result(fake_result(problem=SMALL, other_software=other))
    legacy = fake_result(problem=SMALL)
    del legacy["software"]["evaluator_digest"]  # stored by an evaluator that recorded only its version
    candidate.add_result(legacy)
    reply = evaluator("apply", str(SEED_PATCH), "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is False
    assert (answer["result"]["device"], answer["result"]["card"]) == first_lane_card("auto", None)
    assert answer["result"]["software"] == software()
    assert len(result_files(candidate)) == 7


def test_a_reused_failure_exits_like_the_failure_and_infra_errors_are_not_reused(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result("exception", problem=SMALL))
    candidate.add_result(fake_result("infra_error", problem=SMALL))
    reply = evaluator("apply", str(SEED_PATCH), "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert reply.returncode == 4, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is True and answer["status"] == "exception"
    assert answer["result"]["error"] == "exception: made up"
    assert len(result_files(candidate)) == 2


def test_an_unreadable_stored_result_is_reported_not_skipped(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    path = candidate.add_result(fake_result(problem=SMALL))
    path.write_text("{not json")
    reply = evaluator("apply", str(SEED_PATCH), *SMALL_PROBLEM, cwd=tmp_path)
    assert reply.returncode == 5
    assert str(path.name) in reply.stderr and "--force" in reply.stderr


# --- apply --accept --------------------------------------------------------------------------------------

def test_apply_accept_evaluates_on_the_default_trace_and_accepts(tmp_path):
    reply = evaluator("apply", str(SEED_PATCH), "--json", "--accept", cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is False and answer["accepted"] is True
    candidate = CandidateStore(tmp_path / "candidates").get(answer["candidate"]["id"])
    [kept] = result_files(candidate)
    assert candidate.baseline() == json.loads(kept.read_text()) == answer["result"]
    assert candidate.baseline()["workload"]["source"] == "default"


def test_apply_accept_accepts_a_reused_ok_result_on_the_default_trace(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    baseline = fake_result(combined=0.61)
    candidate.add_result(baseline)
    reply = evaluator("apply", str(SEED_PATCH), "--json", "--accept", cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["reused"] is True and answer["accepted"] is True
    assert candidate.accepted and candidate.baseline() == baseline


def test_apply_accept_refuses_a_failed_result_with_exit_2(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result("invalid_output"))
    reply = evaluator("apply", str(SEED_PATCH), "--accept", cwd=tmp_path)
    assert reply.returncode == 2
    assert f"candidate {candidate.id} cannot be accepted: its result is 'invalid_output'" in reply.stderr
    assert ": invalid_output" in reply.stdout  # the result is still shown
    assert not candidate.accepted


@pytest.mark.parametrize("options", [SMALL_PROBLEM, ("--replicas", "320"), ("--holdout",), ("--no-evaluate",),
                                     ("--dry-run",)])
def test_apply_accept_refuses_what_cannot_give_a_default_trace_result_before_writing(tmp_path, options):
    reply = evaluator("apply", str(SEED_PATCH), "--accept", *options, cwd=tmp_path)
    assert reply.returncode == 2
    assert "--accept needs a result" in reply.stderr
    assert not (tmp_path / "candidates").exists()


# --- accept ----------------------------------------------------------------------------------------------

def test_accept_makes_the_latest_default_trace_result_the_baseline(tmp_path):
    candidate = stored_seed_patch(tmp_path)
    candidate.add_result(fake_result(combined=0.4))
    latest = fake_result(combined=0.45)
    candidate.add_result(latest)
    candidate.add_result(fake_result(problem=SMALL))  # another trace: not a baseline
    candidate.add_result(fake_result("infra_error"))
    reply = evaluator("accept", candidate.id[:6], cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    assert f"candidate {candidate.id} accepted" in reply.stdout and "combined_score 0.4500" in reply.stdout
    assert candidate.baseline() == latest


@pytest.mark.parametrize(
    "results, message",
    [
        ([], "has no result on the 'default' trace"),
        ([fake_result(problem=SMALL)], "has no result on the 'default' trace"),
        ([fake_result(source="holdout")], "has no result on the 'default' trace"),
        ([fake_result(problem=Problem(num_replicas=320))], "has no result on the 'default' trace"),
        ([fake_result(), fake_result("timeout")], "its result is 'timeout', not 'ok': timeout: made up"),
    ],
)
def test_accept_refuses_with_exit_2(tmp_path, results, message):
    candidate = stored_seed_patch(tmp_path)
    for item in results:
        candidate.add_result(item)
    reply = evaluator("accept", candidate.id, "--json", cwd=tmp_path)
    assert reply.returncode == 2 and message in reply.stderr and reply.stdout == ""
    assert not candidate.accepted


@pytest.mark.parametrize("name, message", [("beef", "no candidate 'beef'"), ("xyz!", "is not a candidate id")])
def test_accept_of_an_unknown_id_exits_2(tmp_path, name, message):
    stored_seed_patch(tmp_path)
    reply = evaluator("accept", name, cwd=tmp_path)
    assert reply.returncode == 2 and message in reply.stderr


# --- list ------------------------------------------------------------------------------------------------

def family(root: Path) -> dict[str, StoredCandidate]:
    """Five candidates: three children of the seed, two of `good`; scores, a failure, one never evaluated."""
    store = CandidateStore(root)

    def add(name: str, parent: dict) -> StoredCandidate:
        program = f"# {name}\n"
        return store.add(program, None, {"name": name, "parent": parent, "program_sha256": sha256_text(program)})[0]

    seed = {"kind": "seed", "path": "seeds/eplb.py"}
    made = {"good": add("good", seed), "best": add("best", seed), "broken": add("broken", seed)}
    made["child"] = add("child", {"kind": "candidate", "id": made["good"].id})
    made["fresh"] = add("fresh", {"kind": "candidate", "id": made["good"].id})
    made["good"].add_result(fake_result(combined=0.5))
    made["best"].add_result(fake_result("crash"))
    made["best"].add_result(fake_result(combined=0.9))  # the latest result decides
    made["broken"].add_result(fake_result(combined=0.99))
    made["broken"].add_result(fake_result("invalid_output"))
    made["child"].add_result(fake_result(combined=0.7))
    made["child"].add_result(fake_result("infra_error"))  # not the child's fault: ignored
    store.accept(made["good"], fake_result(combined=0.5))
    return made


def listed(tmp_path: Path, *options: str) -> list[dict]:
    reply = evaluator("list", "--json", "--store", "store", *options, cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    return json.loads(reply.stdout)


def test_list_orders_best_first_with_failures_and_unevaluated_last(tmp_path):
    made = family(tmp_path / "store")
    rows = listed(tmp_path)
    assert [row["name"] for row in rows] == ["best", "child", "good", "broken", "fresh"]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "invalid_output", "unevaluated"]
    assert [row["combined_score"] for row in rows] == [0.9, 0.7, 0.5, None, None]
    assert [row["accepted"] for row in rows] == [False, False, True, False, False]
    assert rows[1]["parent"] == made["good"].id and rows[0]["parent"] == "seed"
    assert rows[0] == {"id": made["best"].id, "name": "best", "status": "ok", "combined_score": 0.9,
                       "balancedness_score": 0.8, "speedup": 6.3, "trace": "default", "parent": "seed",
                       "accepted": False}


@pytest.mark.parametrize(
    "options, names",
    [
        (("--accepted",), ["good"]),
        (("--failed",), ["broken"]),
        (("--parent", "seed"), ["best", "good", "broken"]),
        (("--parent", "GOOD"), ["child", "fresh"]),
        (("--parent", "GOOD", "--failed"), []),
    ],
)
def test_list_filters(tmp_path, options, names):
    made = family(tmp_path / "store")
    options = tuple(made["good"].id[:5] if option == "GOOD" else option for option in options)
    assert [row["name"] for row in listed(tmp_path, *options)] == names


def test_list_as_a_table(tmp_path):
    made = family(tmp_path / "store")
    reply = evaluator("list", "--store", "store", cwd=tmp_path)
    assert reply.returncode == 0, reply.stderr
    header, *lines = reply.stdout.splitlines()
    assert header.split() == ["id", "name", "status", "combined", "balanced", "speedup", "trace", "parent"]
    assert [line.split()[1] if line.startswith("*") else line.split()[0] for line in lines] == [
        made[name].id for name in ("best", "child", "good", "broken", "fresh")]
    [accepted] = [line for line in lines if line.startswith("*")]
    assert accepted.split()[1:] == [made["good"].id, "good", "ok", "0.5000", "0.8000", "6.30x", "default", "seed"]


def test_list_of_an_empty_or_missing_store(tmp_path):
    assert listed(tmp_path) == []
    reply = evaluator("list", "--store", "store", cwd=tmp_path)
    assert reply.returncode == 0 and "(no candidates)" in reply.stdout


@pytest.mark.parametrize("options, message", [(("--parent", "abcd"), "no candidate 'abcd'"),
                                               (("--accepted", "--failed"), "not allowed with argument")])
def test_list_bad_arguments_exit_2(tmp_path, options, message):
    family(tmp_path / "store")
    reply = evaluator("list", "--store", "store", *options, cwd=tmp_path)
    assert reply.returncode == 2 and message in reply.stderr


def test_list_reports_a_corrupt_result_by_file(tmp_path):
    made = family(tmp_path / "store")
    broken = made["good"].add_result(fake_result())
    broken.write_text("")
    reply = evaluator("list", "--store", "store", cwd=tmp_path)
    assert reply.returncode == 2 and broken.name in reply.stderr
