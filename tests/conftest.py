"""Fixtures shared by the end-to-end tests."""

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.evaluation import Evaluator


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The seed's references of the whole test session, in a folder of its own: tests never read a user's cached
    references. (Devices are locked machine-wide: a test waits for a user's evaluation on the same device.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EPLB_EVALUATOR_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def small():
    """An evaluator of the small problem on the CPU, shared by a test module."""
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu") as evaluator:
        yield evaluator
