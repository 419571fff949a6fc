"""The input-dependence check's verdict on the gaps between plans for the windows and plans for their variants."""

from __future__ import annotations

import numpy as np
import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation.freshness import input_dependence
from evaluator.evaluation.seed_plans import seed_plans

TOLERANCE = 0.03
HONEST_SPREAD = 0.027  # one variant's gap, honest, on a problem of 4 layers


def honest(spread: float = HONEST_SPREAD):
    return lambda: spread


def test_a_clear_gap_on_every_variant_is_a_violation():
    violation = input_dependence([0.05, 0.06, 0.045, 0.055, 0.05, 0.06, 0.05, 0.052], TOLERANCE, honest())
    assert violation is not None and violation.invariant == "plan.input_dependence"
    assert "over 8 inputs" in violation.message


def test_an_average_over_the_tolerance_by_chance_is_not():
    """Honest gaps on a small problem: a variant's gap spreads by about 0.027, so two of them can average
    0.04 without any staleness."""
    assert input_dependence([0.07, 0.01], TOLERANCE, honest()) is None


def test_a_single_gap_is_judged_by_the_tolerance_alone():
    assert input_dependence([0.031], TOLERANCE, honest()) is not None
    assert input_dependence([0.029], TOLERANCE, honest()) is None


def test_no_variants_no_verdict():
    assert input_dependence([], TOLERANCE, honest()) is None


@pytest.mark.parametrize("gaps, honest_spread", [([0.0] * 4 + [0.24] * 4, HONEST_SPREAD),
                                                  ([0.0] * 10 + [0.5], 0.0108)],
                         ids=["stale-on-half-small-problem", "stale-on-one-of-eleven-default-trace"])
def test_a_program_stale_on_some_variants_cannot_widen_its_way_past(gaps, honest_spread):
    """Fresh plans on some variants and stale ones on others spread the gaps wide; the spread that excuses their
    average is at most twice an honest program's (the seed's: 0.0108 on the default trace), so these are violations
    however wide the candidate's own."""
    assert input_dependence(gaps, TOLERANCE, honest(honest_spread)) is not None


def test_honest_gaps_pass_however_they_fall():
    rng = np.random.default_rng(7)
    failures = sum(input_dependence(rng.normal(0.0, HONEST_SPREAD, 8).tolist(), TOLERANCE, honest()) is not None
                   for _ in range(2000))
    assert failures == 0


def test_the_honest_spread_is_asked_for_only_when_the_average_is_over_the_tolerance():
    """Working out the honest spread costs sixteen more plans of the seed; an average within the tolerance passes
    whatever the spread, so it is not asked for."""
    asked = []

    def spread() -> float:
        asked.append(True)
        return HONEST_SPREAD

    assert input_dependence([0.05, -0.02, 0.03, 0.0], TOLERANCE, spread) is None
    assert not asked
    assert input_dependence([0.0] * 4 + [0.24] * 4, TOLERANCE, spread) is not None
    assert asked


def test_the_seeds_own_gaps_spread_by_a_fraction_of_the_tolerance():
    """The yardstick of an honest program's spread: the seed's, on variants of the same trace (0.023 on this small
    problem), worked out once per trace when first needed."""
    spread = seed_plans(SMALL_TRACE, SMALL_SETTINGS.problem).gap_spread
    assert 0.2 * TOLERANCE < spread < TOLERANCE
    assert seed_plans(SMALL_TRACE, SMALL_SETTINGS.problem).gap_spread == spread
