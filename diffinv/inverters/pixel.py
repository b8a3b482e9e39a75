"""Mahendran & Vedaldi (CVPR 2015): optimize the pixels, with a total-variation prior.

The image is parameterized by logits (``sigmoid`` keeps it in [0, 1]); random jitter
(a small random translation every step) makes the solution robust, as in the paper.
"""

from __future__ import annotations

import torch

from ..losses import total_variation
from ..targets import TargetNetwork
from .base import Inverter, optimize

__all__ = ["PixelInverter", "pixel_parameterization"]


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


class PixelInverter(Inverter):
    """Pixel optimization with a TV prior and jitter.

    Args:
        target: the network whose features are inverted.
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

    Example:
        >>> out = PixelInverter(target, iterations=300)(feature_set)
        >>> out.images.shape
        torch.Size([4, 3, 128, 128])
    """

    name = "pixel"

    def __init__(
        self,
        target: TargetNetwork,
        *,
        iterations: int = 300,
        learning_rate: float = 0.1,
        tv_weight: float = 0.05,
        tv: str = "isotropic",
        tv_beta: float = 2.0,
        jitter: int = 1,
        loss: str = "nmse",
        temporal_weight: float = 0.0,
        compile: bool | str = False,
    ):
        super().__init__(target)
        if tv not in ("isotropic", "anisotropic"):
            raise ValueError(f"`tv` must be 'isotropic' or 'anisotropic', got {tv!r}.")
        self.iterations, self.learning_rate = iterations, learning_rate
        self.tv_weight, self.tv, self.tv_beta = tv_weight, tv, tv_beta
        self.jitter, self.loss, self.temporal_weight = jitter, loss, temporal_weight
        self.compile = compile

    def _reconstruct(self, features, layer, size, *, generator, progress, init=None, anchor=None, callback=None):
        """``init``: images to start from (warm start); ``anchor``: a fixed ``(1, 3, H, W)`` image
        before the first one in the temporal term (the previous video frame)."""
        params, render = pixel_parameterization(len(features), size, generator=generator, device=self.device, init=init)
        return optimize(
            params,
            lambda: _jitter(render(), self.jitter, generator),
            self.target,
            features,
            layer,
            iterations=self.iterations,
            lr=self.learning_rate,
            loss=self.loss,
            prior_fn=lambda x: self.tv_weight * total_variation(x, self.tv, self.tv_beta),
            temporal_weight=self.temporal_weight,
            temporal_fn=render,
            temporal_anchor=anchor,
            final_fn=render,
            desc=f"pixel {layer}",
            progress=progress,
            compile=self.compile,
            callback=callback,
        )
