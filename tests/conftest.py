"""Fixtures shared by the end-to-end tests."""

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator


@pytest.fixture(scope="module")
def small():
    """An evaluator of the small problem on the CPU, shared by a test module."""
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu") as evaluator:
        yield evaluator
