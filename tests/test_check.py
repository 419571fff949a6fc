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


BASELINE = {"status": "ok", "balancedness_score": 0.7, "speedup": 40.0, "device": "cuda", "card": "H100"}


def test_a_speed_drop_counts_only_beyond_the_tolerance_and_on_the_same_card():
    within = judge("a", "x", BASELINE, [{**BASELINE, "speedup": 31.0}], tolerance=0.25)
    beyond = judge("a", "x", BASELINE, [{**BASELINE, "speedup": 29.0}], tolerance=0.25)
    elsewhere = judge("a", "x", BASELINE, [{**BASELINE, "speedup": 2.0, "card": "H200"}], tolerance=0.25)
    assert within.holds and not beyond.holds and "speedup fell" in beyond.reasons[0]
    assert elsewhere.holds and "speed not compared" in elsewhere.reasons[0]


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
