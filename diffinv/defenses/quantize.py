"""``quantize:B``: each image's features to ``2**B`` uniform levels between their min and max (bits ``B`` in 1..16).

For an attacker (``straight_through=True``) the gradient passes straight through (the identity's gradient).
"""

from __future__ import annotations

import torch

from .base import DefenseFamily, per_image

__all__ = ["QUANTIZE"]


def _quantize(f: torch.Tensor, bits: int, generator, straight_through: bool) -> torch.Tensor:
    flat = f.detach().flatten(1)
    lo, hi = per_image(flat.min(dim=1).values, f), per_image(flat.max(dim=1).values, f)
    step = (hi - lo) / (2**bits - 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.where(step > 0, lo + torch.round((f.detach() - lo) / safe) * step, f.detach())
    return f + (q - f).detach() if straight_through else q


QUANTIZE = DefenseFamily(
    "quantize",
    _quantize,
    lambda v: v.is_integer() and 1 <= v <= 16,
    "an integer number of bits in 1..16",
    "4",
    False,
    integer=True,
)
