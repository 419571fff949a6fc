"""What a trace looks like: its shape, how skewed each layer is and how long hot experts stay hot.

The measures (docs/traces.md defines them for users; the generator's tests hold it to them):
- relative log load: log(load / layer mean + 0.001), so idle experts count as very cold, not minus infinity;
- Zipf exponent of a layer in a window: the slope s of the least-squares line
  relative log load ~ a - s * log(rank + E/8) over the experts sorted hottest first (rank 1..E);
- max/mean: the hottest expert's load over the layer's mean load;
- hot set: a layer's E/16 busiest experts in a window; persistence: the share of the hot set still hot in
  the next window (E/16 / E = 1/16 if the hot set were drawn at random);
- group share of variance: the part of the variance of a layer's relative log loads that lies between
  expert groups (about (G-1)/(E-1), 0.03 for DeepSeek-V3, if groups were unrelated to load).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evaluator.eplb.trace import Trace

RANK_OFFSET_FRACTION = 0.125  # the E/8 in log(rank + E/8)
HOT_SET_FRACTION = 1 / 16
_IDLE = 1e-3  # relative load added before taking logs


@dataclass(frozen=True)
class LayerSkew:
    layer: int
    zipf_exponent: float  # mean over windows
    max_over_mean: float  # mean over windows
    group_share_of_variance: float  # mean over windows


@dataclass(frozen=True)
class TraceSummary:
    source: str
    num_windows: int
    num_layers: int
    num_experts: int
    num_groups: int
    steps_per_window: int
    dropped_steps: int
    integral: bool
    load_per_window: tuple[float, ...]  # all layers and experts
    layers: tuple[LayerSkew, ...]
    hot_set_size: int
    hot_set_persistence: tuple[float, ...]  # window i to i+1, mean over layers
    random_persistence: float  # what persistence would be if hot sets were drawn at random

    def to_json(self) -> dict[str, object]:
        """The summary as JSON-ready data (undefined measures, such as those of idle layers, as null)."""
        return _nan_to_none(dataclasses.asdict(self))


def summarize(trace: Trace, num_groups: int) -> TraceSummary:
    """Measure a trace; `num_groups` is the problem's number of expert groups."""
    windows = trace.windows
    with np.errstate(invalid="ignore", divide="ignore"):  # idle layers give NaN measures, shown as n/a
        exponents = _mean_of_defined(zipf_exponents(windows), axis=0)
        peaks = _mean_of_defined(windows.max(axis=-1) / windows.mean(axis=-1), axis=0)
        grouped = _mean_of_defined(group_share_of_variance(windows, num_groups), axis=0)
        persistence = _mean_of_defined(hot_set_persistence(windows), axis=-1)
    hot = hot_set_size(trace.num_experts)
    return TraceSummary(
        source=trace.source,
        num_windows=trace.num_windows,
        num_layers=trace.num_layers,
        num_experts=trace.num_experts,
        num_groups=num_groups,
        steps_per_window=trace.steps_per_window,
        dropped_steps=trace.dropped_steps,
        integral=trace.windows.dtype.kind == "i",
        load_per_window=tuple(float(x) for x in windows.sum(axis=(1, 2))),
        layers=tuple(
            LayerSkew(layer, float(exponents[layer]), float(peaks[layer]), float(grouped[layer]))
            for layer in range(trace.num_layers)
        ),
        hot_set_size=hot,
        hot_set_persistence=tuple(float(x) for x in persistence),
        random_persistence=hot / trace.num_experts,
    )


def _mean_of_defined(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean along `axis` of the values that are not NaN; NaN where there are none."""
    defined = ~np.isnan(values)
    return np.where(defined, values, 0.0).sum(axis=axis) / defined.sum(axis=axis)


def relative_log_load(windows: np.ndarray) -> np.ndarray:
    """log(load / layer mean + 0.001) for [..., E] loads; NaN for a layer without load."""
    return np.log(windows / windows.mean(axis=-1, keepdims=True) + _IDLE)


def zipf_exponents(windows: np.ndarray, rank_offset_fraction: float = RANK_OFFSET_FRACTION) -> np.ndarray:
    """Zipf exponent of each layer in each window, [..., E] -> [...] (module docstring)."""
    experts = windows.shape[-1]
    x = np.log(np.arange(1, experts + 1) + rank_offset_fraction * experts)
    x -= x.mean()
    y = relative_log_load(-np.sort(-windows, axis=-1))
    return -(y * x).sum(axis=-1) / (x * x).sum()


def hot_set_size(num_experts: int) -> int:
    """How many experts make a layer's hot set: `HOT_SET_FRACTION` of them, at least one."""
    return max(1, round(num_experts * HOT_SET_FRACTION))


def hot_set_persistence(windows: np.ndarray) -> np.ndarray:
    """[W, L, E] -> [W-1, L]: the share of each layer's hot set in window i that is hot in window i+1;
    NaN where the layer is idle in either window."""
    size = hot_set_size(windows.shape[-1])
    hottest = np.argpartition(-windows, size - 1, axis=-1)[..., :size]
    hot = np.zeros(windows.shape, dtype=bool)
    np.put_along_axis(hot, hottest, True, axis=-1)
    busy = windows.sum(axis=-1) > 0
    return np.where(busy[:-1] & busy[1:], (hot[:-1] & hot[1:]).sum(axis=-1) / size, np.nan)


def group_share_of_variance(windows: np.ndarray, num_groups: int) -> np.ndarray:
    """[..., E] -> [...]: the between-group part of the variance of relative log loads (module docstring)."""
    y = relative_log_load(windows)
    y = y.reshape(*y.shape[:-1], num_groups, -1)
    overall = y.mean(axis=(-1, -2), keepdims=True)
    total = ((y - overall) ** 2).sum(axis=(-1, -2))
    between = y.shape[-1] * ((y.mean(axis=-1, keepdims=True) - overall) ** 2).sum(axis=(-1, -2))
    return between / total


def render_text(summary: TraceSummary) -> str:
    """The summary as a few lines of text for a terminal."""
    s = summary
    loads = np.array(s.load_per_window)
    lines = [
        f"trace: {s.source}",
        f"shape: {s.num_windows} windows x {s.num_layers} layers x {s.num_experts} experts "
        f"({s.num_groups} groups), {s.steps_per_window} steps per window, "
        f"{'integer' if s.integral else 'fractional'} loads",
    ]
    if s.dropped_steps:
        lines.append(f"dropped: the last {s.dropped_steps} steps, which do not fill a window")
    lines.append(
        f"load per window: {_number(loads.mean())} on average, from {_number(loads.min())} to {_number(loads.max())}"
    )
    exponents = np.array([layer.zipf_exponent for layer in s.layers])
    peaks = np.array([layer.max_over_mean for layer in s.layers])
    grouped = np.array([layer.group_share_of_variance for layer in s.layers])
    lines.append(
        f"skew: Zipf exponent median {_fixed(_of_defined(np.median, exponents))} "
        f"(range {_fixed(_of_defined(np.min, exponents))}-{_fixed(_of_defined(np.max, exponents))}), "
        f"hottest expert {_times(_of_defined(np.median, peaks))} the layer mean "
        f"(range {_times(_of_defined(np.min, peaks))}-{_times(_of_defined(np.max, peaks))})"
    )
    lines.append(
        f"groups: {_fixed(_of_defined(np.mean, grouped))} of the variance of log load lies between expert groups "
        f"(about {_fixed((s.num_groups - 1) / max(1, s.num_experts - 1))} if groups were unrelated to load)"
    )
    lines.append("per layer: Zipf exponent, hottest/mean")
    cells = [
        f"{layer.layer:>3} {_fixed(layer.zipf_exponent):>5} {_times(layer.max_over_mean):>6}" for layer in s.layers
    ]
    lines += ["  " + "   ".join(cells[i : i + 5]) for i in range(0, len(cells), 5)]
    persistence = np.array(s.hot_set_persistence)
    lines.append(
        f"hot-set persistence (top {s.hot_set_size} experts per layer still top in the next window): "
        f"mean {_fixed(_of_defined(np.mean, persistence))}, lowest {_fixed(_of_defined(np.min, persistence))} "
        f"(at random: {_fixed(s.random_persistence)})"
    )
    lines += ["  " + " ".join(_fixed(p) for p in persistence[i : i + 12]) for i in range(0, len(persistence), 12)]
    return "\n".join(lines) + "\n"


def _of_defined(statistic: Callable[[np.ndarray], float], values: np.ndarray) -> float:
    """`statistic` of the values that are not NaN; NaN if there are none."""
    defined = values[~np.isnan(values)]
    return float(statistic(defined)) if defined.size else math.nan


def _fixed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _times(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}x"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _nan_to_none(data: object) -> object:
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: _nan_to_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nan_to_none(value) for value in data]
    return data
