"""Synthetic expert-load traces modelled on DeepSeek-V3 prefill.

A trace is made in three stages; every number is a field of `SyntheticConfig` (docs/traces.md explains each).

1. Popularity. Each layer ranks its experts by a latent preference and gives rank r (1 = hottest) a weight
   (r + offset) ** -skew, a Zipf-Mandelbrot law; a few layers get a much larger skew. The preference is a mix
   of a few traffic types (code, chat, ...), each with its own taste in experts, experts of one group sharing
   part of it; the mix holds for a regime and changes at occasional regime shifts. On top, a slow random
   drift moves experts in and out of the hot set over hundreds of steps. Popularity is updated every
   `update_steps` steps and held in between.
2. Routing. Every token picks `experts_per_token` distinct experts in `groups_per_token` distinct groups,
   the same number in each (DeepSeek-V3: 8 experts in 4 of 8 groups, 2 per group). Popularity becomes
   the probability that a token picks a group and an expert in it, capped at 1: a token cannot pick an
   expert twice, so the hottest experts saturate and their excess goes to the others.
3. Counting. Tokens are routed by systematic sampling, which gives every token exactly the right number
   of distinct groups and experts with exactly those probabilities; only per-segment counts are drawn
   (one multinomial per period), so the work does not grow with the number of tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import STEPS_PER_WINDOW, Trace

# Routing probabilities are counted in units of 2**-30, so that each token's picks add up exactly.
_QUANTUM = 1 << 30


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic trace; the defaults model DeepSeek-V3 prefill (docs/traces.md)."""

    # shape
    num_layers: int = 58
    num_experts: int = 256
    num_groups: int = 8
    num_windows: int = 12
    steps_per_window: int = STEPS_PER_WINDOW
    tokens_per_step: int = 8192
    # routing
    experts_per_token: int = 8
    groups_per_token: int = 4
    # popularity
    skew: tuple[float, float] = (1.2, 1.8)
    skewed_layer_fraction: float = 0.07
    skewed_layer_skew: tuple[float, float] = (2.5, 3.0)
    rank_offset: float = 0.125
    group_correlation: float = 0.3
    # change over time
    traffic_types: int = 4
    mix_concentration: float = 0.5
    regime_mean_steps: float = 500.0
    drift_share: float = 0.3
    drift_time_steps: float = 300.0
    update_steps: int = 10

    def __post_init__(self) -> None:
        counts = (
            "num_layers", "num_experts", "num_groups", "num_windows", "steps_per_window", "tokens_per_step",
            "experts_per_token", "groups_per_token", "traffic_types", "update_steps",
        )  # fmt: skip
        problems = [
            f"{name} must be at least 1, got {getattr(self, name)}" for name in counts if getattr(self, name) < 1
        ]
        if not problems:
            problems += self._routing_problems()
        for name in ("skew", "skewed_layer_skew"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                problems.append(f"{name} must be a range (low, high) with 0 < low <= high, got {(low, high)}")
        for name in ("skewed_layer_fraction", "group_correlation", "drift_share"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name in ("rank_offset", "mix_concentration", "regime_mean_steps", "drift_time_steps"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid synthetic trace config: " + "; ".join(problems))

    def _routing_problems(self) -> list[str]:
        if self.num_experts % self.num_groups:
            return [f"num_experts ({self.num_experts}) must be a multiple of num_groups ({self.num_groups})"]
        if self.groups_per_token > self.num_groups:
            return [f"groups_per_token ({self.groups_per_token}) must be at most num_groups ({self.num_groups})"]
        if self.experts_per_token % self.groups_per_token:
            return [
                f"experts_per_token ({self.experts_per_token}) must be a multiple of "
                f"groups_per_token ({self.groups_per_token}): a token picks as many experts in each of its groups"
            ]
        if self.experts_per_group_per_token > self.num_experts // self.num_groups:
            return [
                f"a token picks {self.experts_per_group_per_token} experts in each group, "
                f"but a group has only {self.num_experts // self.num_groups}"
            ]
        return []

    @property
    def experts_per_group_per_token(self) -> int:
        return self.experts_per_token // self.groups_per_token

    @property
    def num_steps(self) -> int:
        return self.num_windows * self.steps_per_window

    @classmethod
    def for_problem(cls, problem: Problem, **changes: object) -> SyntheticConfig:
        """The default config with the problem's layers, experts and groups (and any `changes`).

        DeepSeek-V3's routing (8 experts in 4 groups, 2 in each) is kept where the shape allows it. A
        smaller shape routes each token to min(4, groups) groups and, in each, to 8 / that many experts
        but at most half the group (at least 1), so that tokens still choose among their experts."""
        default = cls()
        groups_per_token = min(default.groups_per_token, problem.num_groups)
        per_group = max(
            1,
            min(
                default.experts_per_token // groups_per_token,
                problem.num_experts // problem.num_groups // 2,
            ),
        )
        shaped = {
            "num_layers": problem.num_layers,
            "num_experts": problem.num_experts,
            "num_groups": problem.num_groups,
            "groups_per_token": groups_per_token,
            "experts_per_token": groups_per_token * per_group,
        }
        return replace(default, **{**shaped, **changes})


def generate_trace(config: SyntheticConfig, seed: int) -> Trace:
    """A synthetic trace, the same for the same config and seed (on one numpy version)."""
    windows = sample_windows(config, np.random.default_rng(seed))
    return Trace(windows, source=f"synthetic(seed={seed})", steps_per_window=config.steps_per_window)


def sample_windows(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Token counts [num_windows, num_layers, num_experts] (int64) of one synthetic trace drawn with `rng`."""
    shares = _popularity(config, rng)
    k = config.experts_per_group_per_token
    by_group = shares.reshape(*shares.shape[:2], config.num_groups, -1)
    group_chance = _capped_proportional(by_group.sum(-1), config.groups_per_token)
    expert_chance = _capped_proportional(by_group, k)

    starts, update_of, window_of, steps = _periods(config)
    tokens = np.broadcast_to((steps * config.tokens_per_step)[:, None], (len(starts), config.num_layers))
    group_tokens = _systematic_counts(rng, group_chance[update_of], config.groups_per_token, tokens)
    expert_counts = _systematic_counts(rng, expert_chance[update_of], k, group_tokens)
    counts = expert_counts.reshape(len(starts), config.num_layers, config.num_experts)
    window_starts = np.flatnonzero(np.diff(window_of, prepend=-1))
    return np.add.reduceat(counts, window_starts, axis=0)


def _popularity(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Share of routed tokens each expert would get without routing limits, per update: [U, L, E]."""
    layers, experts, groups = config.num_layers, config.num_experts, config.num_groups
    updates = -(-config.num_steps // config.update_steps)

    skew = rng.uniform(*config.skew, size=layers)
    skewed = rng.choice(layers, size=round(config.skewed_layer_fraction * layers), replace=False)
    skew[skewed] = rng.uniform(*config.skewed_layer_skew, size=len(skewed))
    ranks = np.arange(1, experts + 1) + config.rank_offset * experts
    weight_of_rank = ranks[None, :] ** -skew[:, None]  # [L, E], hottest first

    group_of_expert = np.arange(experts) // (experts // groups)
    shared = rng.standard_normal((config.traffic_types, layers, groups))[..., group_of_expert]
    own = rng.standard_normal((config.traffic_types, layers, experts))
    tastes = math.sqrt(config.group_correlation) * shared + math.sqrt(1 - config.group_correlation) * own

    shifts = rng.random(updates) < config.update_steps / config.regime_mean_steps
    shifts[0] = False
    regime = np.cumsum(shifts)
    mixes = rng.dirichlet(np.full(config.traffic_types, config.mix_concentration), size=regime[-1] + 1)
    mixes /= np.linalg.norm(mixes, axis=1, keepdims=True)  # a mix of unit-variance tastes keeps unit variance
    preference = np.einsum("rt,tle->rle", mixes, tastes)[regime]

    keep = math.exp(-config.update_steps / config.drift_time_steps)
    drift = rng.standard_normal((updates, layers, experts))
    for u in range(1, updates):  # an Ornstein-Uhlenbeck walk: stationary unit variance, memory drift_time_steps
        drift[u] = keep * drift[u - 1] + math.sqrt(1 - keep * keep) * drift[u]

    latent = math.sqrt(1 - config.drift_share) * preference + math.sqrt(config.drift_share) * drift
    rank = np.argsort(np.argsort(-latent, axis=-1), axis=-1)
    weights = np.take_along_axis(np.broadcast_to(weight_of_rank, latent.shape), rank, axis=-1)
    return weights / weights.sum(-1, keepdims=True)


def _capped_proportional(weights: np.ndarray, total: int) -> np.ndarray:
    """Probabilities min(1, c * weights) along the last axis, with c chosen so that they sum to `total`.

    The number of capped items is the smallest k for which the (k+1)-th largest item, scaled to share the
    remaining total with the smaller ones, stays within 1."""
    descending = -np.sort(-weights, axis=-1)
    tail = np.cumsum(descending[..., ::-1], axis=-1)[..., ::-1]  # tail[i] = sum of descending[i:]
    capped = np.arange(total)
    scale = (total - capped) / tail[..., :total]
    fits = scale * descending[..., :total] <= 1
    fits[..., -1] = True  # with total-1 capped the rest always fit; rounding must not say otherwise
    first = np.argmax(fits, axis=-1)[..., None]
    return np.minimum(1.0, np.take_along_axis(scale, first, axis=-1) * weights)


def _systematic_counts(rng: np.random.Generator, chance: np.ndarray, picks: int, units: np.ndarray) -> np.ndarray:
    """How many of `units[...]` units picked each item, when every unit picks exactly `picks` distinct items
    along the last axis of `chance` (probabilities summing to `picks`, each at most 1).

    Systematic sampling: the items' probabilities are laid end to end on [0, picks) and a unit with
    uniform u picks the items covering u, u+1, ..., u+picks-1. So only the counts of units in each segment
    of [0, 1) cut by the items' boundaries need drawing."""
    quanta = np.floor(np.clip(chance, 0.0, 1.0) * _QUANTUM).astype(np.int64)
    headroom = _QUANTUM - quanta
    missing = picks * _QUANTUM - quanta.sum(-1, keepdims=True)  # rounding loss, a few quanta
    quanta += np.clip(missing - (np.cumsum(headroom, axis=-1) - headroom), 0, headroom)

    laps, position = np.divmod(np.cumsum(quanta, axis=-1), _QUANTUM)
    order = np.argsort(position, axis=-1, kind="stable")
    boundaries = np.take_along_axis(position, order, axis=-1)  # starts at 0: the last item ends on a lap
    segments = rng.multinomial(units, np.diff(boundaries, axis=-1, append=_QUANTUM) / _QUANTUM)
    below_sorted = np.cumsum(segments, axis=-1) - segments
    below = np.empty_like(below_sorted)
    np.put_along_axis(below, order, below_sorted, axis=-1)  # units with u below each item's end

    def previous(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros_like(x[..., :1]), x[..., :-1]], axis=-1)

    return units[..., None] * (laps - previous(laps)) + below - previous(below)


def _periods(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spans of steps with one popularity and one window: (first step, update index, window index, steps)."""
    total = config.num_steps
    starts = np.union1d(np.arange(0, total, config.update_steps), np.arange(0, total, config.steps_per_window))
    steps = np.diff(starts, append=total)
    return starts, starts // config.update_steps, starts // config.steps_per_window, steps
