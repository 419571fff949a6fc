"""The software a measurement depends on, and the evaluator's digest among it: what tells results and seed references
of one evaluator's code from another's."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
from pathlib import Path

import pytest
import torch

from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator import __version__
from evaluator.software import PACKAGE_ROOT, package_digest, software
from evaluator.evaluation import Evaluator
from evaluator.evaluation.timing import HarnessModel, ReferenceCache, SeedReference
from evaluator.paths import SEED_PROGRAM


def copy_of_the_package(folder: Path) -> Path:
    return Path(shutil.copytree(PACKAGE_ROOT, folder / "evaluator", ignore=shutil.ignore_patterns("__pycache__")))


def test_a_copy_of_the_package_has_its_digest_and_bytecode_caches_and_hidden_files_do_not_count(tmp_path):
    copy = copy_of_the_package(tmp_path)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"compiled elsewhere")
    (copy / "stray.pyc").write_bytes(b"\0")
    (copy / ".cli.py.swp").write_bytes(b"an editor's")
    (copy / ".hidden").mkdir()
    (copy / ".hidden" / "notes.py").write_text("x = 1")
    assert package_digest(copy) == package_digest()


def test_editing_adding_or_renaming_a_file_changes_the_digest(tmp_path):
    digests = {package_digest()}
    for number, change in enumerate((
        lambda root: (root / "cli.py").write_text((root / "cli.py").read_text() + "\n# an edit\n"),
        lambda root: (root / "eplb" / "notes.txt").write_text("a new data file"),
        lambda root: (root / "cli.py").rename(root / "cli2.py"),
    )):
        change(copy_of_the_package(tmp_path / str(number)))
        digests.add(package_digest(tmp_path / str(number) / "evaluator"))
    assert len(digests) == 4


def test_moving_bytes_between_a_name_and_a_content_changes_the_digest(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    (one / "ab").write_text("c")
    (other / "a").write_text("bc")
    assert package_digest(one) != package_digest(other)


def test_results_record_torch_cuda_python_the_evaluator_version_and_its_digest(small):
    versions = software()
    assert versions == {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                        "evaluator": __version__, "evaluator_digest": package_digest()}
    assert len(versions["evaluator_digest"]) == 16 and int(versions["evaluator_digest"], 16) >= 0
    result = small.evaluate(SEED_PROGRAM)
    assert result.status == "ok", result.error
    assert result.software == versions


def reference(ratio: float) -> SeedReference:
    return SeedReference(ratio, 0.01, 500.0, 10.0, 3, HarnessModel(0.3, 0.05, 0.1))


def test_a_seed_reference_cached_by_another_build_of_the_evaluator_is_measured_again(tmp_path):
    path = tmp_path / "seed-reference.json"

    def seed_ratio_with(cache: dict) -> float:
        path.write_text(json.dumps(cache))
        with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=0,
                       seed_references=ReferenceCache(path)) as ev:
            result = ev.evaluate(SEED_PROGRAM)
        assert result.status == "ok", result.error
        return result.timing["seed"]["ratio"]

    seed_ratio_with({})
    (key, entry), = json.loads(path.read_text()).items()
    digest = software()["evaluator_digest"]
    assert f"evaluator_digest {digest}" in key and key.endswith("yardstick cpu")  # no device yardstick on a CPU
    planted = {**entry, "ratio": 12345.0}
    assert seed_ratio_with({key: planted}) == 12345.0
    assert seed_ratio_with({key.replace(digest, "0" * 16): planted}) != 12345.0


def test_the_reference_cache_keeps_the_newest_entries(tmp_path):
    path = tmp_path / "seed-reference.json"
    cache = ReferenceCache(path)
    limit = ReferenceCache.MAX_ENTRIES
    for number in range(limit + 5):
        cache.put(f"build {number}", reference(float(number + 1)))
    cache.put("build 5", reference(6.0))  # used again: the newest now
    kept = list(json.loads(path.read_text()))
    assert len(kept) == limit and kept[-1] == "build 5"
    assert kept[0] == "build 6" and "build 4" not in kept and "build 5" not in kept[:-1]
    assert ReferenceCache(path).get(f"build {limit + 4}") == reference(float(limit + 5))


def test_two_evaluators_sharing_the_cache_file_keep_each_others_references(tmp_path):
    path = tmp_path / "seed-reference.json"
    first, second = ReferenceCache(path), ReferenceCache(path)  # both read the file while it was empty
    first.put("a card", reference(1.0))
    second.put("another card", reference(2.0))
    assert list(json.loads(path.read_text())) == ["a card", "another card"]
    assert ReferenceCache(path).get("a card") == reference(1.0)
    assert second.get("a card") == reference(1.0)


def test_unsound_entries_of_the_reference_cache_are_dropped_not_used(tmp_path):
    """A damaged or hand-edited entry costs a new measurement: a NaN ratio would make every speedup NaN, a string
    would fail every evaluation."""
    sound = reference(50.0).to_json()
    harness = sound["harness"]
    path = tmp_path / "seed-reference.json"
    path.write_text(json.dumps({
        "sound": sound,
        "nan ratio": {**sound, "ratio": float("nan")},
        "infinite seed time": {**sound, "seed_time_ms": float("inf")},
        "string ratio": {**sound, "ratio": "50"},
        "no ratio": {**sound, "ratio": 0.0},
        "negative spread": {**sound, "ratio_spread": -0.1},
        "no processes": {**sound, "processes": 0},
        "processes not counted": {**sound, "processes": 2.5},
        "negative harness": {**sound, "harness": {**harness, "fixed_ms": -1.0}},
        "harness not an object": {**sound, "harness": 3},
        "a field missing": {key: value for key, value in sound.items() if key != "processes"},
        "an unknown field": {**sound, "extra": 1},
        "a device ratio without its yardstick": {**sound, "device_ratio": 40.0},
        "a negative device ratio": {**sound, "device_ratio": -40.0, "device_yardstick_ms": 3.0},
        "a device yardstick of no time": {**sound, "device_ratio": 40.0, "device_yardstick_ms": 0.0},
        "not an object": [1, 2],
    }))
    cache = ReferenceCache(path)
    assert cache.get("sound") == reference(50.0)
    assert [key for key in json.loads(path.read_text()) if cache.get(key) is not None] == ["sound"]


def test_the_seeds_ratio_to_a_mix_of_the_two_yardsticks_mixes_its_ratios_to_each():
    both = dataclasses.replace(reference(50.0), device_ratio=200.0, device_yardstick_ms=2.5)
    assert both.ratio_at(1.0) == 50.0 and both.ratio_at(0.0) == 200.0
    assert both.ratio_at(0.5) == pytest.approx(100.0)
    assert reference(50.0).ratio_at(0.0) == 50.0  # measured without the device's yardstick: the yardstick's alone
    assert SeedReference.from_json(json.loads(json.dumps(both.to_json()))) == both
