"""Held-out traces: fresh on every call, unlike the default, with no way back to their seed."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from evaluator.eplb.default_trace import DEFAULT_CONFIG, default_trace
from evaluator.eplb.holdout import KEY_VARIABLE, holdout_trace
from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import generate_trace
from evaluator.eplb.trace import Trace

SMALL = Problem(num_layers=4, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2, num_gpus=4)


def test_two_holdout_traces_differ_and_neither_is_the_default() -> None:
    first, second = holdout_trace(Problem()), holdout_trace(Problem())
    default = default_trace().windows
    assert first.windows.shape == second.windows.shape == default.shape
    assert not np.array_equal(first.windows, second.windows)
    assert not np.array_equal(first.windows, default)
    assert not np.array_equal(second.windows, default)


def test_holdout_is_none_of_the_first_seeds_a_candidate_would_try() -> None:
    trace = holdout_trace(SMALL)
    config = DEFAULT_CONFIG.for_problem(SMALL)
    for seed in range(64):
        assert not np.array_equal(trace.windows, generate_trace(config, seed).windows)


def test_holdout_has_the_problem_shape_and_default_statistics() -> None:
    trace = holdout_trace(SMALL)
    assert trace.windows.shape == (DEFAULT_CONFIG.num_windows, 4, 16)
    assert (trace.source, trace.steps_per_window) == ("holdout", DEFAULT_CONFIG.steps_per_window)
    tokens = DEFAULT_CONFIG.steps_per_window * DEFAULT_CONFIG.tokens_per_step
    np.testing.assert_array_equal(trace.windows.sum(axis=-1), tokens * DEFAULT_CONFIG.experts_per_token)


def reachable(root: object) -> list[object]:
    """Every object reachable from `root` through references, modules and classes left out."""
    seen: dict[int, object] = {}
    pending = [root]
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, type) or type(item).__name__ == "module":
            continue
        seen[id(item)] = item
        pending.extend(gc.get_referents(item))
    return list(seen.values())


def test_the_seed_is_not_reachable_from_the_trace() -> None:
    trace = holdout_trace(Problem())
    objects = reachable(trace)
    assert any(obj is trace.windows for obj in objects)  # the walk does see the trace's contents
    kinds = {type(obj).__name__ for obj in objects}
    assert not kinds & {"Generator", "SeedSequence", "PCG64", "BitGenerator"}, kinds
    big_ints = [obj for obj in objects if isinstance(obj, int) and not isinstance(obj, bool) and obj >= 2**53]
    assert big_ints == []  # a 128-bit seed would be one
    assert set(vars(trace)) == {"windows", "source", "steps_per_window", "dropped_steps"}
    assert isinstance(trace, Trace) and trace.source == "holdout"


KEY = "c0ffee" * 6  # 36 characters


def test_a_key_draws_one_secret_trace_wherever_it_is_given(monkeypatch) -> None:
    keyed = holdout_trace(SMALL, KEY)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    from_the_environment = holdout_trace(SMALL)
    assert np.array_equal(keyed.windows, from_the_environment.windows)
    assert keyed.source == "holdout" and KEY not in repr(keyed)
    another_key = holdout_trace(SMALL, KEY[:-1] + "f")
    assert not np.array_equal(keyed.windows, another_key.windows)
    assert not np.array_equal(keyed.windows, generate_trace(DEFAULT_CONFIG, 0).windows[:, :4, :16])


def held_out_summary(key: str | None) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
    if key is not None:
        environment[KEY_VARIABLE] = key
    return subprocess.run([sys.executable, "-m", "evaluator", "trace", "--holdout", "--json", "--layers", "4",
                           "--experts", "16", "--replicas", "24", "--groups", "4", "--nodes", "2", "--gpus", "4"],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_processes_given_the_key_score_on_the_same_trace_and_others_draw_fresh_ones() -> None:
    first, second = held_out_summary(KEY), held_out_summary(KEY)
    assert first.returncode == second.returncode == 0, first.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    unkeyed = [held_out_summary(None) for _ in range(2)]
    assert json.loads(unkeyed[0].stdout) != json.loads(unkeyed[1].stdout)


@pytest.mark.parametrize("key", ["too short", "x" * 31])
def test_a_key_a_candidate_could_guess_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        holdout_trace(SMALL, key)
    done = held_out_summary(key)
    assert done.returncode == 2 and "at least 32 characters" in done.stderr
