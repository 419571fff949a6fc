"""Held-out traces: drawn from a secret seed, so that no candidate can know the loads it is scored on.

The default trace is public: its data ships with the package and its seed is in the source, so a
candidate could tune itself to it, or look its windows up. A held-out trace has the same statistics (the
default generator config, shaped to the problem) but comes from a secret seed: 128 bits of operating-system
entropy used once, inside this process, and kept nowhere (not in the returned trace, not on disk); or, for a
loop whose candidates are evaluated by many processes, drawn from a key the loop holds
(`EPLB_EVALUATOR_HOLDOUT_KEY`), so that every process scores on the same secret trace. No worker's
environment carries the key, and a key is long enough that a candidate cannot find it by trying keys
against the windows it is given.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import numpy as np

from evaluator.eplb.problem import Problem
from evaluator.eplb.synthetic import SyntheticConfig, sample_windows
from evaluator.eplb.trace import Trace
from evaluator.store import HOLDOUT_SOURCE


KEY_VARIABLE = "EPLB_EVALUATOR_HOLDOUT_KEY"
MIN_KEY_CHARS = 32  # e.g. secrets.token_hex(16): 128 bits


def holdout_trace(problem: Problem, key: str | None = None) -> Trace:
    """A synthetic trace for the problem's shape from a secret seed: drawn from `key` (by default
    `$EPLB_EVALUATOR_HOLDOUT_KEY`, when set), the same for every process given it; else fresh on every call.
    Raises ValueError for a key shorter than `MIN_KEY_CHARS`."""
    if key is None:
        key = os.environ.get(KEY_VARIABLE) or None
    if key is not None and len(key) < MIN_KEY_CHARS:
        raise ValueError(f"a held-out trace's key must have at least {MIN_KEY_CHARS} characters (e.g. "
                         f"python -c 'import secrets; print(secrets.token_hex(16))'), got {len(key)}")
    seed = secrets.randbits(128) if key is None else int.from_bytes(
        hashlib.sha256(f"eplb-evaluator held-out trace\0{key}".encode()).digest()[:16], "big")
    config = SyntheticConfig.for_problem(problem)
    windows = sample_windows(config, np.random.default_rng(seed))
    return Trace(windows, source=HOLDOUT_SOURCE, steps_per_window=config.steps_per_window)
