"""The synthetic generator: exact routing arithmetic, and statistics within the ranges docs/traces.md states."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluator.eplb.default_trace import default_trace
from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.eplb.trace_summary import (
    group_share_of_variance,
    hot_set_persistence,
    zipf_exponents,
)

DEFAULT = SyntheticConfig()
SEEDS = (1, 2, 3)
SMALL = SyntheticConfig(num_layers=6, num_experts=32, num_groups=4, num_windows=5, tokens_per_step=64)


def realisations() -> list[np.ndarray]:
    return [default_trace().windows] + [generate_trace(DEFAULT, seed).windows for seed in SEEDS]


@pytest.fixture(scope="module")
def traces() -> list[np.ndarray]:
    return realisations()


def skewed_count(config: SyntheticConfig) -> int:
    return round(config.skewed_layer_fraction * config.num_layers)


# --- routing: every token picks exactly 8 distinct experts in 4 distinct groups, 2 in each -------------


def check_routing(windows: np.ndarray, config: SyntheticConfig) -> None:
    tokens = config.steps_per_window * config.tokens_per_step
    per_group = config.experts_per_group_per_token
    assert windows.dtype == np.int64
    assert (windows >= 0).all()
    np.testing.assert_array_equal(windows.sum(axis=-1), tokens * config.experts_per_token)
    assert windows.max() <= tokens, "an expert was picked twice by one token"
    groups = windows.reshape(*windows.shape[:2], config.num_groups, -1).sum(axis=-1)
    assert (groups % per_group == 0).all(), "a token picked a group without picking exactly its share of experts in it"
    assert groups.max() <= tokens * per_group, "a group was picked twice by one token"


def test_default_routing_is_exact(traces: list[np.ndarray]) -> None:
    for windows in traces:
        check_routing(windows, DEFAULT)


def test_per_step_totals_equal_tokens_times_experts_per_token() -> None:
    config = dataclasses.replace(SMALL, steps_per_window=1, num_windows=300)
    windows = generate_trace(config, 5).windows
    check_routing(windows, config)
    np.testing.assert_array_equal(windows.sum(axis=-1), 64 * 8)


@settings(max_examples=25, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4, 8]),
    experts_per_group=st.integers(2, 12),
    groups_per_token=st.integers(1, 4),
    per_group=st.integers(1, 3),
    steps_per_window=st.integers(1, 23),
    update_steps=st.integers(1, 17),
    tokens=st.integers(1, 500),
    seed=st.integers(0, 2**32),
)
def test_routing_is_exact_for_any_shape_and_timing(
    groups: int,
    experts_per_group: int,
    groups_per_token: int,
    per_group: int,
    steps_per_window: int,
    update_steps: int,
    tokens: int,
    seed: int,
) -> None:
    groups_per_token = min(groups_per_token, groups)
    per_group = min(per_group, experts_per_group)
    config = SyntheticConfig(
        num_layers=3,
        num_experts=groups * experts_per_group,
        num_groups=groups,
        num_windows=3,
        steps_per_window=steps_per_window,
        update_steps=update_steps,
        tokens_per_step=tokens,
        groups_per_token=groups_per_token,
        experts_per_token=groups_per_token * per_group,
        regime_mean_steps=20.0,
    )
    check_routing(generate_trace(config, seed).windows, config)


def test_saturated_experts_get_every_token_and_no_more() -> None:
    # so skewed that the hottest expert of every layer would take more than all tokens without the cap
    config = dataclasses.replace(SMALL, skew=(8.0, 8.0), skewed_layer_fraction=0.0)
    windows = generate_trace(config, 3).windows
    check_routing(windows, config)
    tokens = config.steps_per_window * config.tokens_per_step
    np.testing.assert_array_equal(windows.max(axis=-1), tokens)


# --- determinism --------------------------------------------------------------------------------------


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    first, again, other = (generate_trace(SMALL, seed).windows for seed in (11, 11, 12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_trace_has_the_configured_shape_and_windows() -> None:
    trace = generate_trace(dataclasses.replace(SMALL, steps_per_window=7, update_steps=10), 0)
    assert trace.windows.shape == (5, 6, 32)
    assert trace.steps_per_window == 7
    assert trace.source == "synthetic(seed=0)"


# --- statistics of the default config (ranges stated in docs/traces.md) -------------------------------


def test_layers_are_zipf_like_with_a_few_much_more_skewed(traces: list[np.ndarray]) -> None:
    skewed = skewed_count(DEFAULT)
    assert skewed == 4
    for windows in traces:
        exponents = np.sort(zipf_exponents(windows).mean(axis=0))
        ordinary, most = exponents[:-skewed], exponents[-skewed:]
        assert 1.1 <= ordinary.min() and ordinary.max() <= 1.85, ordinary
        assert most.min() >= 2.2, most
        assert most.min() - ordinary.max() >= 0.4


def test_hottest_expert_load_over_layer_mean(traces: list[np.ndarray]) -> None:
    skewed = skewed_count(DEFAULT)
    for windows in traces:
        peaks = np.sort((windows.max(axis=-1) / windows.mean(axis=-1)).mean(axis=0))
        assert 3.5 <= peaks[0] and peaks[-skewed - 1] <= 8.5, peaks
        assert peaks[-skewed] >= 9.5, peaks


def test_hot_sets_persist_and_drift(traces: list[np.ndarray]) -> None:
    for windows in traces:
        persistence = hot_set_persistence(windows).mean(axis=-1)
        assert 0.5 <= persistence.mean() <= 0.8, persistence
        assert np.median(persistence) >= 0.6, persistence
        first_to_last = hot_set_persistence(windows[[0, -1]]).mean()
        assert first_to_last < persistence.mean() - 0.15, "the hot set should drift over the trace"
        assert first_to_last > 16 / 256, "nothing of the hot set survives: drift too fast"


def test_regime_shifts_are_occasional() -> None:
    long = dataclasses.replace(DEFAULT, num_windows=60)
    for seed in SEEDS:
        persistence = hot_set_persistence(generate_trace(long, seed).windows).mean(axis=-1)
        shifts = int((persistence < 0.5).sum())
        # a shift every 500 steps on average, about 12 in 6000 steps; some change the mix little, so a
        # few window pairs, a minority of the 59, see the hot set mostly replaced
        assert 2 <= shifts <= 20, persistence


def test_experts_of_one_group_are_correlated(traces: list[np.ndarray]) -> None:
    random_groups = (DEFAULT.num_groups - 1) / (DEFAULT.num_experts - 1)
    for windows in traces:
        share = group_share_of_variance(windows, DEFAULT.num_groups).mean()
        assert 0.1 <= share <= 0.35, share
    unrelated = generate_trace(dataclasses.replace(DEFAULT, group_correlation=0.0), 1).windows
    assert group_share_of_variance(unrelated, DEFAULT.num_groups).mean() < 2 * random_groups


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_layers": 0}, "num_layers must be at least 1"),
        ({"num_experts": 250}, "num_experts (250) must be a multiple of num_groups (8)"),
        ({"groups_per_token": 9}, "groups_per_token (9) must be at most num_groups (8)"),
        ({"experts_per_token": 6}, "experts_per_token (6) must be a multiple of groups_per_token (4)"),
        ({"experts_per_token": 132}, "a token picks 33 experts in each group, but a group has only 32"),
        ({"skew": (1.8, 1.2)}, "skew must be a range"),
        ({"group_correlation": 1.5}, "group_correlation must be between 0 and 1"),
        ({"drift_time_steps": 0.0}, "drift_time_steps must be positive"),
    ],
)
def test_bad_config_is_rejected_with_the_field_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        dataclasses.replace(DEFAULT, **changes)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("problem", "groups_per_token", "experts_per_token"),
    [
        (Problem(), 4, 8),
        (Problem(num_groups=1), 1, 8),
        (Problem(num_groups=2), 2, 8),
        (Problem(num_layers=3, num_experts=6, num_replicas=8, num_groups=3, num_nodes=2, num_gpus=4), 3, 3),
        (Problem(num_layers=2, num_experts=8, num_replicas=8, num_groups=8, num_nodes=2, num_gpus=4), 4, 4),
    ],
)
def test_config_for_problem_keeps_deepseek_routing_where_the_shape_allows(
    problem: Problem, groups_per_token: int, experts_per_token: int
) -> None:
    config = SyntheticConfig.for_problem(problem)
    assert (config.num_layers, config.num_experts, config.num_groups) == (
        problem.num_layers,
        problem.num_experts,
        problem.num_groups,
    )
    assert (config.groups_per_token, config.experts_per_token) == (groups_per_token, experts_per_token)
    check_routing(generate_trace(config, 0).windows, config)
