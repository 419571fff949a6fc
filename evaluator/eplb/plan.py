"""A placement that passed every invariant: the data scoring works on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Plan:
    """One rebalance output, validated and copied out of the candidate's hands.

    The tensors are int64, contiguous, on one device and share no memory with
    what the candidate returned, so nothing the candidate kept can change them.
    """

    phy2log: torch.Tensor  # [L, R]: logical expert of each physical slot
    log2phy: torch.Tensor  # [L, E, X]: slots of each expert, padded with -1
    logcnt: torch.Tensor  # [L, E]: replicas of each expert
