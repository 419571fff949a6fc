"""The candidate store through its API and real processes: reading results, acceptance, crashes, concurrency."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from evaluator.eplb.problem import Problem
from evaluator.store import ABANDONED_STAGING_S, CandidateStore, StoreError, candidate_id, sha256_text

DEFAULT_PROBLEM = asdict(Problem())
DEFAULT_WORKLOAD = {"source": "default", "digest": "0123456789abcdef", "windows": 20, "steps_per_window": 100,
                    "problem": DEFAULT_PROBLEM}


def result(status: str = "ok", combined: float = 0.5, source: str = "default", **workload: object) -> dict:
    return {"status": status, "error": None if status == "ok" else f"{status} happened", "combined_score": combined,
            "balancedness_score": 0.8, "speedup": 10.0, "workload": {**DEFAULT_WORKLOAD, "source": source, **workload}}


def add(store: CandidateStore, program: str, parent: dict | None = None):
    stored, _ = store.add(program, None, {"name": f"n{len(program)}", "parent": parent or {"kind": "seed"},
                                          "program_sha256": sha256_text(program)})
    return stored


def test_results_come_back_oldest_first_and_latest_skips_infra_errors_and_other_workloads(tmp_path):
    candidate = add(CandidateStore(tmp_path), "x = 1\n")
    assert candidate.results() == [] and candidate.latest_result() is None
    first = result(combined=0.1)
    other_shape = result(combined=0.2, problem={**DEFAULT_PROBLEM, "num_layers": 4})
    infra = result("infra_error")
    for item in (first, other_shape, infra):
        candidate.add_result(item)
    assert candidate.results() == [first, other_shape, infra]
    assert candidate.latest_result() == other_shape
    assert candidate.latest_result(DEFAULT_WORKLOAD) == first
    assert candidate.latest_result({"source": "default"}) == other_shape
    assert candidate.latest_result({"source": "holdout"}) is None
    for key, other in (("digest", "fedcba9876543210"), ("windows", 21), ("steps_per_window", 50)):
        assert candidate.latest_result({**DEFAULT_WORKLOAD, key: other}) is None


def test_an_unreadable_result_file_is_an_error_naming_it(tmp_path):
    candidate = add(CandidateStore(tmp_path), "x = 1\n")
    candidate.add_result(result())
    broken = candidate.path / "results" / "29990101T000000000000Z-abcdef.json"
    broken.write_text('{"status": "ok", ')
    with pytest.raises(StoreError, match=str(broken)):
        candidate.results()
    broken.write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a JSON object"):
        candidate.latest_result()


def test_candidates_lists_every_complete_folder_and_ignores_leftovers(tmp_path):
    store = CandidateStore(tmp_path)
    ids = sorted(add(store, f"x = {k}\n").id for k in range(3))
    (tmp_path / ".incoming-0123456789ab-xyz").mkdir()  # what a killed writer leaves
    (tmp_path / "notes").mkdir()  # not a candidate id
    assert [candidate.id for candidate in store.candidates()] == ids


def test_a_killed_writers_hidden_folder_is_removed_once_abandoned(tmp_path):
    store = CandidateStore(tmp_path)
    abandoned, recent = tmp_path / ".incoming-0123456789ab-x", tmp_path / ".incoming-0123456789ab-y"
    for folder in (abandoned, recent):
        folder.mkdir()
        (folder / "program.py").write_text("x = 1\n")
    long_ago = time.time() - ABANDONED_STAGING_S - 60
    os.utime(abandoned, (long_ago, long_ago))
    add(store, "y = 2\n")
    assert not abandoned.exists() and recent.exists()


def test_a_candidate_folder_without_metadata_is_an_error(tmp_path):
    store = CandidateStore(tmp_path)
    add(store, "x = 1\n")
    empty = candidate_id("y = 2\n")
    (tmp_path / empty).mkdir()
    with pytest.raises(StoreError, match=f"candidate {empty} in .* is unreadable"):
        list(store.candidates())


def test_accept_records_the_baseline(tmp_path):
    store = CandidateStore(tmp_path)
    candidate = add(store, "x = 1\n")
    assert not candidate.accepted and candidate.baseline() is None
    baseline = result(combined=0.7)
    path = store.accept(candidate, baseline)
    assert path == candidate.path / "accepted.json" and candidate.accepted
    assert candidate.baseline() == baseline
    record = candidate.acceptance()
    assert record["id"] == candidate.id and record["evaluator_version"] and record["accepted_at"]
    assert [p.name for p in candidate.path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "bad, message",
    [
        (result("invalid_output"), "its result is 'invalid_output', not 'ok': invalid_output happened"),
        (result("infra_error"), "not 'ok'"),
        (result(source="holdout"), "measured on workload 'holdout'"),
        (result(source="traces/prod.json"), "measured on workload 'traces/prod.json'"),
        ({"status": "ok"}, "measured on workload None"),
        (result(problem={**DEFAULT_PROBLEM, "num_replicas": 320}), "'num_replicas': 320"),
    ],
)
def test_accept_refuses_failed_results_and_other_workloads(tmp_path, bad, message):
    store = CandidateStore(tmp_path)
    candidate = add(store, "x = 1\n")
    with pytest.raises(StoreError, match=f"candidate {candidate.id} cannot be accepted: .*{message}"):
        store.accept(candidate, bad)
    assert not candidate.accepted


def test_refusing_keeps_an_earlier_baseline(tmp_path):
    store = CandidateStore(tmp_path)
    candidate = add(store, "x = 1\n")
    store.accept(candidate, result(combined=0.3))
    with pytest.raises(StoreError):
        store.accept(candidate, result("crash"))
    assert candidate.baseline()["combined_score"] == 0.3


def test_an_unreadable_acceptance_record_is_an_error(tmp_path):
    store = CandidateStore(tmp_path)
    candidate = add(store, "x = 1\n")
    (candidate.path / "accepted.json").write_text("{}")
    with pytest.raises(StoreError, match="has no 'result' object"):
        candidate.baseline()
    (candidate.path / "accepted.json").write_text(json.dumps({"result": {"balancedness_score": 0.8}}))
    with pytest.raises(StoreError, match="accepted.json: its result has no number 'speedup'"):
        candidate.baseline()


# --- real processes --------------------------------------------------------------------------------------

WRITER = """
import sys
from evaluator.store import CandidateStore, sha256_text
store = CandidateStore(sys.argv[1])
tag, size = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for k in range(10**6):
    program = f"# {tag} {k}\\n" + "x = 0  # padding\\n" * size
    store.add(program, "patch\\n" * 1000, {"name": f"{tag}-{k}", "program_sha256": sha256_text(program)})
"""


def start_writer(root: Path, tag: str, size: int) -> subprocess.Popen[str]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), tag, str(size)], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline() == "ready\n"
    return writer


def assert_no_half_candidate(root: Path, patch: str | None = "patch\n" * 1000) -> list[str]:
    """Every candidate readers see is whole: program, metadata and patch agree; returns their ids."""
    ids = []
    for candidate in CandidateStore(root).candidates():
        program = candidate.program()
        assert candidate.meta["id"] == candidate.id == candidate_id(program)
        assert candidate.meta["program_sha256"] == sha256_text(program)
        assert (candidate.path / "patch.diff").exists() == (patch is not None)
        if patch is not None:
            assert (candidate.path / "patch.diff").read_text() == patch
        ids.append(candidate.id)
    return ids


def test_a_writer_killed_at_random_moments_never_leaves_a_half_candidate(tmp_path):
    picker = random.Random(20261126)
    for round_ in range(8):
        writer = start_writer(tmp_path, f"round{round_}", size=200_000)  # about 3.4 MB a program
        time.sleep(picker.uniform(0.0, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        assert writer.returncode == -signal.SIGKILL
        assert_no_half_candidate(tmp_path)
    leftovers = [path for path in tmp_path.iterdir() if path.name.startswith(".incoming-")]
    assert leftovers, "no kill landed mid-write: the test did not exercise what it is for"
    assert len(assert_no_half_candidate(tmp_path)) >= 1


CONCURRENT = """
import json, os, sys, time
from evaluator.store import CandidateStore, sha256_text
store = CandidateStore(sys.argv[1])
tag, start = sys.argv[2], sys.argv[3]
while not os.path.exists(start):
    time.sleep(0.001)
created = {}
for k in range(30):
    for program in (f"shared = {k}\\n" + "y = 1\\n" * 5000, f"own = {k!r}  # {tag}\\n" + "y = 1\\n" * 5000):
        stored, new = store.add(program, None, {"name": tag, "program_sha256": sha256_text(program)})
        stored.add_result({"status": "ok", "writer": tag, "k": k})
        created[stored.id] = new
print(json.dumps(created))
"""


def test_two_concurrent_writers_do_not_corrupt_each_other(tmp_path):
    root, start = tmp_path / "candidates", tmp_path / "start"
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(root), tag, str(start)],
                                stdout=subprocess.PIPE, text=True) for tag in ("a", "b")]
    time.sleep(1.0)  # both are importing or waiting; then they start together
    start.touch()
    outputs = [writer.communicate(timeout=300)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0]
    created_a, created_b = (json.loads(output) for output in outputs)
    shared = {candidate_id(f"shared = {k}\n" + "y = 1\n" * 5000) for k in range(30)}
    assert all(created_a[cid] != created_b[cid] for cid in shared)  # exactly one writer created each
    ids = assert_no_half_candidate(root, patch=None)
    assert sorted(ids) == sorted(set(created_a) | set(created_b)) and len(ids) == 90
    for candidate in CandidateStore(root).candidates():
        writers_of = sorted(r["writer"] for r in candidate.results())
        assert writers_of == (["a", "b"] if candidate.id in shared else [candidate.meta["name"]])
    assert not [path for path in root.iterdir() if path.name.startswith(".")]

