"""``prune:P``: zero a random ``round(P * C)`` of the ``C`` channels of each image (``P`` in [0, 1)).

Random (fresh masks at every call). Its zeros survive in what it ships: an attacker reads which channels
were kept and applies that support when pruning is the last step (:func:`_channel_support`).
"""

from __future__ import annotations

import torch

from .base import DefenseFamily

__all__ = ["PRUNE"]


def _prune(f: torch.Tensor, fraction: float, generator, straight_through: bool) -> torch.Tensor:
    n, channels = f.shape[0], f.shape[1]
    k = round(fraction * channels)
    device = generator.device if generator is not None else f.device
    order = torch.rand(n, channels, generator=generator, device=device).argsort(dim=1)[:, :k].to(f.device)
    mask = torch.ones(n, channels, device=f.device, dtype=f.dtype).scatter_(1, order, 0.0)
    return f * mask.view(n, channels, *([1] * (f.ndim - 2)))


def _channel_support(observed: torch.Tensor) -> tuple[torch.Tensor, None]:
    """The channels a pruning kept: those not all zero in ``observed``."""
    nonzero = observed != 0
    nonzero = nonzero.flatten(2).any(dim=2) if observed.ndim > 2 else nonzero
    return nonzero.view(*nonzero.shape, *([1] * (observed.ndim - nonzero.ndim))).to(observed.dtype), None


PRUNE = DefenseFamily(
    "prune",
    _prune,
    lambda v: 0 <= v < 1,
    "a fraction of channels in [0, 1)",
    "0.5",
    True,
    support=_channel_support,
)
