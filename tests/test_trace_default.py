"""The embedded default trace: fixed data, verified on load, reproducible from its config and seed."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from evaluator.eplb import default_trace as default_module
from evaluator.eplb.default_trace import (
    DATA_FILE,
    DATA_SHA256,
    DEFAULT_CONFIG,
    DEFAULT_SEED,
    default_trace,
)
from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import generate_trace
from evaluator.eplb.trace import TraceError, check_matches
from evaluator.eplb.trace_summary import hot_set_persistence


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    default_trace.cache_clear()
    yield
    default_trace.cache_clear()


def test_default_trace_has_the_deepseek_v3_prefill_shape() -> None:
    trace = default_trace()
    assert trace.windows.shape == (12, 58, 256)
    assert trace.windows.dtype == np.int64
    assert (trace.source, trace.steps_per_window, trace.dropped_steps) == ("default", 100, 0)
    check_matches(trace, Problem())
    assert not trace.windows.flags.writeable


def test_shipped_file_has_the_recorded_sha256() -> None:
    assert hashlib.sha256(DATA_FILE.read_bytes()).hexdigest() == DATA_SHA256


def test_regenerating_from_config_and_seed_reproduces_the_shipped_data() -> None:
    regenerated = generate_trace(DEFAULT_CONFIG, DEFAULT_SEED).windows
    np.testing.assert_array_equal(regenerated, default_trace().windows)


def test_default_trace_contains_a_regime_shift() -> None:
    persistence = hot_set_persistence(default_trace().windows).mean(axis=-1)
    assert persistence.min() < 0.5 < np.median(persistence)


def test_a_damaged_data_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    damaged = tmp_path / DATA_FILE.name
    shutil.copyfile(DATA_FILE, damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(default_module, "DATA_FILE", damaged)
    expected = f"the embedded default trace {re.escape(str(damaged))} is damaged: its sha256 is [0-9a-f]{{64}}, "
    with pytest.raises(TraceError, match=expected + f"expected {DATA_SHA256}; reinstall the package"):
        default_trace()


def test_a_missing_data_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setattr(default_module, "DATA_FILE", tmp_path / "gone.npy.xz")
    with pytest.raises(TraceError, match="cannot read the embedded default trace .*gone.npy.xz: No such file"):
        default_trace()
