"""Mahendran & Vedaldi (CVPR 2015): optimize the pixels, with a total-variation prior.

The image is parameterized by logits (``sigmoid`` keeps it in [0, 1]); random jitter
(a small random translation every step) makes the solution robust, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import total_variation
from .base import Inverter, optimize
from .config import FEATURE_LOSSES, InverterConfig, option

__all__ = ["PixelConfig", "PixelInverter", "pixel_parameterization"]


def pixel_parameterization(
    n: int, size: tuple[int, int], *, generator: torch.Generator | None = None, device=None, init: torch.Tensor | None = None
):
    """Returns ``(params, image_fn)``: logits of ``(n, 3, H, W)`` pixels and ``sigmoid``.

    ``init`` (images in [0, 1]) starts from given images instead of grey + noise.
    """
    if init is not None:
        logits = torch.logit(init.detach().to(device).float().clamp(1e-3, 1 - 1e-3))
    else:
        noise = torch.randn(n, 3, *size, generator=generator, device=device if generator is None else generator.device)
        logits = (0.1 * noise).to(device)
    logits = logits.clone().requires_grad_(True)
    return [logits], lambda: torch.sigmoid(logits)


def _jitter(images: torch.Tensor, pixels: int, generator: torch.Generator | None) -> torch.Tensor:
    if pixels <= 0:
        return images
    dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


@dataclass(frozen=True)
class PixelConfig(InverterConfig):
    """The pixel inverter's hyper-parameters.

    Attributes:
        iterations: optimization steps.
        learning_rate: Adam step size on the pixel logits.
        tv_weight: weight of the total-variation prior (per pixel mean).
        tv: ``"isotropic"`` or ``"anisotropic"``.
        tv_beta: the TV exponent (2 smooth, 1 edge-preserving).
        jitter: maximum random translation in pixels (0 disables it).
        loss: feature loss, ``"nmse"``, ``"mse"`` or ``"cosine"``.
        temporal_weight: smoothing between consecutive images of the batch (video frames).
        compile: run the target through ``torch.compile`` (``True``: inductor; or a backend name;
            :mod:`diffinv.compilation`).
    """

    method = "pixel"
    accepts_init = True
    accepts_anchor = True
    accepts_feature_transform = True
    streams_images = True

    iterations: int = option(300, "positive_int")
    learning_rate: float = option(0.1, "non_negative")
    tv_weight: float = option(0.05, "non_negative")
    tv: str = option("isotropic", choices=("isotropic", "anisotropic"))
    tv_beta: float = option(2.0, "positive")
    jitter: int = option(1, "non_negative_int")
    loss: str = option("nmse", choices=FEATURE_LOSSES)
    temporal_weight: float = option(0.0, "non_negative")
    compile: bool | str = option(False, "compile")


class PixelInverter(Inverter):
    """Pixel optimization with a TV prior and jitter.

    Args:
        target: the network whose features are inverted.
        config: a :class:`PixelConfig` (default: its defaults).
        **options: fields of :class:`PixelConfig` (``iterations``, ``learning_rate``, ``tv_weight``, ...).

    Raises:
        ValueError: an option :class:`PixelConfig` does not have, or a value it refuses.

    Example:
        >>> out = PixelInverter(target, iterations=300)(feature_set)
        >>> out.images.shape
        torch.Size([4, 3, 128, 128])
    """

    name = "pixel"
    config_class = PixelConfig

    def _reconstruct(self, features, layer, size, *, generator, progress, init=None, anchor=None, callback=None,
                     feature_transform=None):
        """``init``: images to start from (warm start); ``anchor``: a fixed ``(1, 3, H, W)`` image
        before the first one in the temporal term (the previous video frame)."""
        c = self.config
        params, render = pixel_parameterization(len(features), size, generator=generator, device=self.device, init=init)
        return optimize(
            params,
            lambda: _jitter(render(), c.jitter, generator),
            self.target,
            features,
            layer,
            iterations=c.iterations,
            lr=c.learning_rate,
            loss=c.loss,
            prior_fn=lambda x: c.tv_weight * total_variation(x, c.tv, c.tv_beta),
            temporal_weight=c.temporal_weight,
            temporal_fn=render,
            temporal_anchor=anchor,
            final_fn=render,
            desc=f"pixel {layer}",
            progress=progress,
            compile=c.compile,
            callback=callback,
            feature_transform=feature_transform,
        )
