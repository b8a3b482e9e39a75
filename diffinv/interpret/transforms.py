"""Random transforms that make feature visualizations robust (lucid/lucent ``transform.py``).

A transform is ``t(images, generator) -> images``, differentiable in ``images``; one random draw
per call is shared by the whole batch. The target network resizes whatever size comes out to its
own input size, so transforms may change the image size.

Example:
    >>> t = compose([pad(12), jitter(8), random_scale([0.9, 1.0, 1.1]), random_rotate(range(-10, 11)), jitter(4)])
    >>> t(images, torch.Generator().manual_seed(0)).shape
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Transform", "compose", "jitter", "pad", "random_rotate", "random_scale", "standard_transforms"]

Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _choice(values: Sequence, generator: torch.Generator | None):
    return values[int(torch.randint(0, len(values), (1,), generator=generator))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pads every side by ``width`` pixels of constant ``value`` (grey), so that the borders can move in."""

    def t(images, generator=None):
        return F.pad(images, (width,) * 4, mode="constant", value=value) if width > 0 else images

    return t


def jitter(pixels: int) -> Transform:
    """A random crop that drops ``pixels`` rows and columns (a random translation by up to ``pixels``)."""

    def t(images, generator=None):
        if pixels <= 0:
            return images
        h, w = images.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(0, pixels + 1, (2,), generator=generator))
        return images[..., dy : dy + h - pixels, dx : dx + w - pixels]

    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Bilinear rescaling by a factor drawn from ``scales``."""
    scales = list(scales)

    def t(images, generator=None):
        s = float(_choice(scales, generator))
        if s == 1.0:
            return images
        h, w = images.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    return t


def random_rotate(angles: Sequence[float], fill: float = 0.5) -> Transform:
    """Rotation by an angle (degrees) drawn from ``angles``; uncovered corners are ``fill`` (grey)."""
    angles = list(angles)

    def t(images, generator=None):
        a = math.radians(float(_choice(angles, generator)))
        if a == 0.0:
            return images
        theta = torch.tensor(
            [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
            dtype=images.dtype,
            device=images.device,
        )
        grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
        return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

    return t


def compose(transforms: Sequence[Transform]) -> Transform:
    """Applies ``transforms`` in order."""
    transforms = list(transforms)

    def t(images, generator=None):
        for transform in transforms:
            images = transform(images, generator)
        return images

    return t


def standard_transforms(size: int) -> Transform:
    """lucent's ``standard_transforms``, scaled to an image of side ``size`` (lucent's numbers are for 224)."""
    k = max(size / 224.0, 0.25)
    return compose(
        [
            pad(round(12 * k)),
            jitter(round(8 * k)),
            random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
            random_rotate(list(range(-10, 11)) + 5 * [0]),
            jitter(max(1, round(4 * k))),
        ]
    )
