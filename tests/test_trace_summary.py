"""The trace summary's measures, on traces whose answers are known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluator.eplb.trace import Trace
from evaluator.eplb.trace_summary import (
    group_share_of_variance,
    hot_set_persistence,
    render_text,
    summarize,
    zipf_exponents,
)


@pytest.mark.parametrize("exponent", [0.8, 1.5, 2.7])
def test_zipf_exponent_recovers_the_law_it_measures(exponent: float) -> None:
    experts = 256
    loads = 1e9 * (np.arange(1, experts + 1) + experts / 8) ** -exponent
    shuffled = np.random.default_rng(0).permutation(loads)
    assert zipf_exponents(shuffled[None, None, :])[0, 0] == pytest.approx(exponent, abs=0.02)


def test_uniform_loads_have_no_skew_and_idle_layers_no_measure() -> None:
    windows = np.stack([np.full(64, 7.0), np.zeros(64)])[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        exponents = zipf_exponents(windows)[0]
    assert exponents[0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(exponents[1])


def test_hot_set_persistence_counts_the_hot_experts_that_stay_hot() -> None:
    def window(*hot: int) -> np.ndarray:
        loads = np.ones(32)  # 32 experts: the hot set is the top 2
        loads[list(hot)] = [100.0, 90.0]
        return loads

    windows = np.stack([window(0, 1), window(1, 0), window(0, 5), window(6, 7)])[:, None, :]
    np.testing.assert_array_equal(hot_set_persistence(windows)[:, 0], [1.0, 0.5, 0.0])


def test_group_share_of_variance_is_one_for_group_loads_and_zero_for_balanced_groups() -> None:
    by_group = np.repeat([1.0, 10.0, 100.0, 1000.0], 8)
    within = np.tile([1.0, 10.0, 100.0, 1000.0], 8)
    shares = group_share_of_variance(np.stack([by_group, within])[None], num_groups=4)[0]
    assert shares[0] == pytest.approx(1.0)
    assert shares[1] == pytest.approx(0.0, abs=1e-12)


def test_summary_of_a_small_trace() -> None:
    windows = np.ones((3, 2, 16))
    windows[:, 0, 3] = 9.0  # layer 0: one hot expert, 9 / (24 / 16) = 6x the mean
    windows[:, 1, :] = 0.0  # layer 1: idle
    trace = Trace(windows, source="small.json", steps_per_window=5, dropped_steps=4)
    summary = summarize(trace, num_groups=4)
    assert (summary.num_windows, summary.num_layers, summary.num_experts, summary.num_groups) == (3, 2, 16, 4)
    assert (summary.steps_per_window, summary.dropped_steps, summary.integral) == (5, 4, True)
    assert summary.load_per_window == (24.0, 24.0, 24.0)
    assert summary.layers[0].max_over_mean == pytest.approx(6.0)
    assert np.isnan(summary.layers[1].max_over_mean) and np.isnan(summary.layers[1].zipf_exponent)
    assert summary.hot_set_size == 1 and summary.hot_set_persistence == (1.0, 1.0)
    assert summary.random_persistence == 1 / 16

    data = json.loads(json.dumps(summary.to_json(), allow_nan=False))
    assert data["layers"][1]["zipf_exponent"] is None
    assert data["layers"][0]["max_over_mean"] == pytest.approx(6.0)

    text = render_text(summary)
    assert "trace: small.json" in text
    assert "shape: 3 windows x 2 layers x 16 experts (4 groups), 5 steps per window, integer loads" in text
    assert "dropped: the last 4 steps, which do not fill a window" in text
    per_layer = text.splitlines()[text.splitlines().index("per layer: Zipf exponent, hottest/mean") + 1]
    assert per_layer.split() == ["0", f"{summary.layers[0].zipf_exponent:.2f}", "6.0x", "1", "n/a", "n/a"]
    assert "mean 1.00, lowest 1.00 (at random: 0.06)" in text


@pytest.mark.filterwarnings("error")
def test_a_trace_without_any_load_summarises_as_not_available() -> None:
    summary = summarize(Trace(np.zeros((2, 3, 16)), source="idle", steps_per_window=1), num_groups=4)
    text = render_text(summary)
    assert "skew: Zipf exponent median n/a (range n/a-n/a), hottest expert n/a the layer mean" in text
    assert "mean n/a, lowest n/a" in text
    assert all(value is None for value in summary.to_json()["hot_set_persistence"])
