"""The embedded default trace: the same windows on every machine, so scores are reproducible and exact.

The windows were drawn once with `generate_trace(DEFAULT_CONFIG, DEFAULT_SEED)` and are shipped as data
(`default_trace.npy.xz`), because a generator's output may change between numpy versions; the file's
sha256 is checked on every load. `python -m evaluator.eplb.default_trace` rewrites the file and prints
its new sha256, for the day the generator's model changes on purpose.
"""

from __future__ import annotations

import hashlib
import io
import lzma
from functools import lru_cache
from pathlib import Path

import numpy as np

from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.eplb.trace import Trace, TraceError

DEFAULT_CONFIG = SyntheticConfig()
DEFAULT_SEED = 0
DATA_FILE = Path(__file__).with_name("default_trace.npy.xz")
DATA_SHA256 = "b5bc7e3e5d661c5ede833daeda89567a7c827a092aa528bfc2ab0db55503373a"


@lru_cache(maxsize=1)
def default_trace() -> Trace:
    """The embedded default trace (DeepSeek-V3 prefill shape, 12 windows of 100 steps)."""
    try:
        data = DATA_FILE.read_bytes()
    except OSError as error:
        raise TraceError(f"cannot read the embedded default trace {DATA_FILE}: {error.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != DATA_SHA256:
        raise TraceError(
            f"the embedded default trace {DATA_FILE} is damaged: its sha256 is {digest}, expected {DATA_SHA256}; "
            "reinstall the package"
        )
    windows = np.load(io.BytesIO(lzma.decompress(data)), allow_pickle=False)
    return Trace(windows, source="default", steps_per_window=DEFAULT_CONFIG.steps_per_window)


def _encode(windows: np.ndarray) -> bytes:
    """The file format of the default trace: an .npy array of little-endian int32, xz-compressed."""
    if windows.max() > np.iinfo(np.int32).max:
        raise ValueError("the default trace's loads must fit in int32")
    buffer = io.BytesIO()
    np.save(buffer, windows.astype("<i4"), allow_pickle=False)
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def _write() -> None:
    data = _encode(generate_trace(DEFAULT_CONFIG, DEFAULT_SEED).windows)
    partial = DATA_FILE.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(DATA_FILE)  # never leave a half-written data file behind
    print(f"wrote {DATA_FILE} ({len(data)} bytes), sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    _write()
