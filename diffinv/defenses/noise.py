"""``noise:S``: add Gaussian noise of std ``S`` x the std of each image's features (``S >= 0``).

Random (fresh noise at every call); the plain reference that a learned defense has to beat on the
privacy-utility frontier (``baseline``).
"""

from __future__ import annotations

import math

import torch

from .base import DefenseFamily, per_image, randn

__all__ = ["NOISE"]


def _noise(f: torch.Tensor, sigma: float, generator, straight_through: bool) -> torch.Tensor:
    std = per_image(f.detach().flatten(1).std(dim=1), f)
    return f + sigma * std * randn(f.shape, generator, f)


NOISE = DefenseFamily(
    "noise",
    _noise,
    lambda v: 0 <= v < math.inf,
    "a finite number >= 0 (the noise std relative to the features' std)",
    "0.1",
    True,
    baseline=True,
)
