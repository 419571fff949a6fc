"""`python -m evaluator check` on the landed store, and on copies of it that were tampered with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluator.paths import PROJECT_ROOT
from evaluator.regression import judge

LANDED = PROJECT_ROOT / "candidates"
SEED_PATCH_ID = "014becbb59f7"


def check(store: Path) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "evaluator", "check", "--store", str(store), "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    return done.returncode, json.loads(done.stdout)


def copy_of_landed(tmp_path: Path) -> Path:
    store = tmp_path / "candidates"
    shutil.copytree(LANDED, store, ignore=shutil.ignore_patterns(".lineage*"))
    return store


def test_the_landed_store_holds():
    code, report = check(LANDED)
    assert code == 0 and report["status"] == "pass"
    [verdict] = report["candidates"]
    assert verdict["candidate_id"] == SEED_PATCH_ID and verdict["holds"] and verdict["status"] == "ok"


def test_a_tampered_baseline_fails(tmp_path):
    store = copy_of_landed(tmp_path)
    accepted = store / SEED_PATCH_ID / "accepted.json"
    data = json.loads(accepted.read_text())
    data["result"]["balancedness_score"] += 0.01
    accepted.write_text(json.dumps(data))
    code, report = check(store)
    assert code == 1 and report["status"] == "fail"
    assert "balancedness is" in report["candidates"][0]["reasons"][0]


def test_a_candidate_made_invalid_fails(tmp_path):
    store = copy_of_landed(tmp_path)
    program = store / SEED_PATCH_ID / "program.py"
    program.write_text(program.read_text() + "\n_original = rebalance_experts\n\ndef rebalance_experts(*args):\n"
                       "    return tuple(t.to(torch.int32) for t in _original(*args))\n")
    code, report = check(store)
    assert code == 1
    [verdict] = report["candidates"]
    assert not verdict["holds"] and verdict["status"] == "invalid_output"


BASELINE = {"status": "ok", "balancedness_score": 0.7, "speedup": 40.0, "speedup_interval": [38.0, 42.0],
            "device": "cuda", "card": "H100"}


def run(speedup: float, low: float, high: float, **changes: object) -> dict:
    return {**BASELINE, "speedup": speedup, "speedup_interval": [low, high], **changes}


def test_a_speed_drop_counts_only_when_the_intervals_part_by_more_than_the_tolerance_and_on_the_same_card():
    # the baseline's bottom is 38: less a GPU's 15% is 32.3
    overlapping = judge("a", "x", BASELINE, [run(30.0, 28.0, 33.0)])
    apart = judge("a", "x", BASELINE, [run(30.0, 29.0, 32.0)])
    one_of_two_near = judge("a", "x", BASELINE, [run(30.0, 29.0, 32.0), run(36.0, 35.0, 37.0)])
    elsewhere = judge("a", "x", BASELINE, [run(2.0, 1.9, 2.1, card="H200")])
    assert overlapping.holds and one_of_two_near.holds
    assert not apart.holds and "speedup fell from 40.00x (95% interval 38.00 to 42.00) to 30.00x" in apart.reasons[0]
    assert elsewhere.holds and "speed not compared" in elsewhere.reasons[0]


def test_a_baseline_from_before_intervals_counts_as_its_speedup_alone():
    old = {key: value for key, value in BASELINE.items() if key != "speedup_interval"}
    assert judge("a", "x", old, [run(34.5, 33.0, 34.5)]).holds  # 40 less 15% is 34
    assert not judge("a", "x", old, [run(33.0, 32.0, 33.5)]).holds


def test_on_a_cpu_which_other_load_slows_unevenly_a_speedup_may_fall_by_half():
    on_cpu = {**BASELINE, "device": "cpu", "card": "a CPU"}
    assert judge("a", "x", on_cpu, [run(25.0, 20.0, 20.0, device="cpu", card="a CPU")]).holds  # 38 less half: 19
    fell = judge("a", "x", on_cpu, [run(17.0, 16.0, 18.0, device="cpu", card="a CPU")])
    assert not fell.holds and "more than 50% below" in fell.reasons[0]


def run_check(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "check", *options], capture_output=True, text=True,
                          timeout=600)


def test_a_baseline_without_its_scores_is_bad_input_not_a_regression(tmp_path):
    store = copy_of_landed(tmp_path)
    accepted = store / SEED_PATCH_ID / "accepted.json"
    data = json.loads(accepted.read_text())
    del data["result"]["speedup"]
    accepted.write_text(json.dumps(data))
    done = run_check("--store", str(store))
    assert done.returncode == 2, done.stderr
    assert f"{accepted}: its result has no number 'speedup'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_check_on_a_device_that_is_not_there_is_bad_input(tmp_path):
    done = run_check("--store", str(copy_of_landed(tmp_path)), "--device", "cuda")
    assert done.returncode == 2 and done.stderr.startswith("error: --device cuda:"), done.stderr
