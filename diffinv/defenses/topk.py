"""``topk:K``: keep each image's ``round(K * numel)`` largest-magnitude entries, zero the rest (``K`` in (0, 1]).

For an attacker (``straight_through=True``) the gradient passes straight through. Its zeros survive in what
it ships: an attacker reads the kept entries and the smallest kept magnitude (:func:`_entry_support`).
"""

from __future__ import annotations

import torch

from .base import DefenseFamily, per_image

__all__ = ["TOPK"]


def _topk(f: torch.Tensor, fraction: float, generator, straight_through: bool) -> torch.Tensor:
    flat = f.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    index = flat.detach().abs().topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, index, 1.0)
    kept = (flat * mask).view_as(f)
    return f + (kept - f).detach() if straight_through else kept


def _entry_support(observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries a top-k kept, and the smallest kept magnitude per image (the dropped ones were at most it)."""
    nonzero = observed != 0
    kept = torch.where(nonzero, observed.abs(), torch.full_like(observed, float("inf")))
    return nonzero.to(observed.dtype), per_image(kept.flatten(1).min(dim=1).values, observed)


TOPK = DefenseFamily(
    "topk", _topk, lambda v: 0 < v <= 1, "a fraction of entries in (0, 1]", "0.1", False, support=_entry_support
)
