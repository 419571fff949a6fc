"""Held-out traces: drawn from a secret seed, so that no candidate can know the loads it is scored on.

The default trace is public: its data ships with the package and its seed is in the source, so a
candidate could tune itself to it. A held-out trace has the same statistics (the default generator
config, shaped to the problem) but comes from 128 bits of operating-system entropy that are used once,
inside this process, and kept nowhere: not in the returned trace, not on disk.
"""

from __future__ import annotations

import secrets

import numpy as np

from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, sample_windows
from evaluator.eplb.trace import Trace


def holdout_trace(problem: Problem) -> Trace:
    """A fresh synthetic trace for the problem's shape, drawn from a secret seed; different on every call."""
    config = SyntheticConfig.for_problem(problem)
    windows = sample_windows(config, np.random.default_rng(secrets.randbits(128)))
    return Trace(windows, source="holdout", steps_per_window=config.steps_per_window)
