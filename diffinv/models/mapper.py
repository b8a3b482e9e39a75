"""FeatureMapper: a target layer's features -> the diffusion latent (black-box inversion).

When the attacker has (image, feature) pairs but no gradients of the target, inversion
is a learned map. :class:`FeatureMapper` maps the features of one layer — spatial maps of
any stride, or pooled vectors — to the latent of a Stable Diffusion VAE
(``latent_channels x H/f x W/f``, 8 for the real SD VAE). Decoding that latent gives the black-box
reconstruction; it can also start the white-box optimization (:meth:`FeatureMapper.initial_latents`).
It is a diffusers ``ModelMixin`` + ``ConfigMixin`` (``save_pretrained`` / ``from_pretrained``: its
``config.json`` and safetensors weights). Training lives in :mod:`diffinv.jobs.training`.

Example:
    >>> vae = diffinv.pipelines.load_vae("path/to/stable-diffusion-v1-5")
    >>> mapper = FeatureMapper.for_target(target, "blocks.2", (256, 256), vae)
    >>> latents = mapper.initial_latents(feature_set)          # (N, 4, 32, 32)
    >>> images = decode_latents(vae, latents).clamp(0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..features import FeatureSet
from ..targets import TargetNetwork
from .learned import FeatureStandardizer, check_model_input
from .vae import vae_scale_factor

__all__ = ["FeatureMapper"]


# ---------------------------------------------------------------------- building blocks
def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _resample_stages(size_in: int, size_out: int) -> int:
    """Number of x2 stages from ``size_in`` to ``size_out`` (positive: up, negative: down)."""
    return round(math.log2(size_out / size_in))


# ---------------------------------------------------------------------- the mapper
class FeatureMapper(ModelMixin, ConfigMixin, FeatureStandardizer):
    """Features of one target layer -> scaled diffusion latents.

    Spatial features ``(C, h, w)`` go through a 3x3 convolution, x2 strided convolutions or
    x2 upsampling stages until they have the latent's resolution (a final bilinear resize
    covers strides that are not powers of two), residual blocks and a 3x3 convolution to
    the latent channels. Pooled vectors ``(C,)`` go through a linear layer to a small grid
    first. Features are standardized per channel with statistics stored in the weights.

    Args:
        feature_shape: the layer's feature shape without batch, ``(C, h, w)`` or ``(C,)``.
        latent_shape: ``(latent_channels, H / f, W / f)``.
        hidden_channels: width of the network.
        num_res_blocks: residual blocks at the latent resolution.
        vector_grid: side of the grid a pooled vector is projected onto.
        target, layer, input_size: what produced the features (recorded, and checked at
            inference).
        vae_scale_factor, scaling_factor, model: the VAE the latents belong to (recorded).

    Example:
        >>> mapper = FeatureMapper(feature_shape=(40, 16, 16), latent_shape=(4, 16, 16))
        >>> mapper(torch.randn(2, 40, 16, 16)).shape
        torch.Size([2, 4, 16, 16])
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        feature_shape: Sequence[int] = (40, 16, 16),
        latent_shape: Sequence[int] = (4, 16, 16),
        hidden_channels: int = 128,
        num_res_blocks: int = 2,
        vector_grid: int = 4,
        target: str | None = None,
        layer: str | None = None,
        input_size: Sequence[int] | None = None,
        vae_scale_factor: int = 8,
        scaling_factor: float | None = None,
        model: str | None = None,
    ):
        super().__init__()
        feature_shape, latent_shape = tuple(feature_shape), tuple(latent_shape)
        if len(feature_shape) not in (1, 3):
            raise ValueError(
                f"`feature_shape` must be (C, H, W) for feature maps or (C,) for pooled vectors, got {feature_shape}."
            )
        if len(latent_shape) != 3:
            raise ValueError(f"`latent_shape` must be (channels, height, width), got {latent_shape}.")
        channels, hid = feature_shape[0], hidden_channels
        self.register_feature_stats(channels)
        if len(feature_shape) == 3:
            self.fc = None
            self.conv_in = nn.Conv2d(channels, hid, 3, padding=1)
            start = feature_shape[1]
        else:
            start = min(vector_grid, latent_shape[1])
            self.fc = nn.Linear(channels, hid * start * start)
            self.conv_in = nn.Conv2d(hid, hid, 3, padding=1)
        self._grid = start
        stages = _resample_stages(start, latent_shape[1])
        resample = []
        for _ in range(abs(stages)):
            if stages < 0:
                resample += [_ResBlock(hid), nn.Conv2d(hid, hid, 3, stride=2, padding=1)]
            else:
                resample += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(hid, hid, 3, padding=1),
                    _ResBlock(hid),
                ]
        self.resample = nn.Sequential(*resample)
        self.blocks = nn.Sequential(*[_ResBlock(hid) for _ in range(num_res_blocks)])
        self.norm_out = nn.GroupNorm(_groups(hid), hid)
        self.conv_out = nn.Conv2d(hid, latent_shape[0], 3, padding=1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_target(
        cls,
        target: TargetNetwork,
        layer: str,
        image_size: tuple[int, int],
        vae: AutoencoderKL,
        *,
        model: str | None = None,
        **kwargs,
    ) -> FeatureMapper:
        """A mapper sized for ``target``'s ``layer`` at ``image_size`` and ``vae``'s latent space.

        Raises:
            ValueError: if ``image_size`` is not divisible by the VAE's scale factor.
        """
        f = vae_scale_factor(vae)
        h, w = (int(v) for v in image_size)
        if h % f or w % f:
            raise ValueError(f"`image_size` has to be divisible by the VAE scale factor {f} but is {(h, w)}.")
        return cls(
            feature_shape=target.feature_shape(layer, (h, w)),
            latent_shape=(vae.config.latent_channels, h // f, w // f),
            target=target.name,
            layer=layer,
            input_size=(h, w),
            vae_scale_factor=f,
            scaling_factor=float(vae.config.scaling_factor),
            model=None if model is None else str(model),
            **kwargs,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, *feature_shape)`` -> ``(N, *latent_shape)`` scaled latents."""
        x = self.standardize(features.to(self.conv_in.weight.dtype))
        if self.fc is not None:
            x = F.silu(self.fc(x.flatten(1))).view(len(x), -1, self._grid, self._grid)
        x = self.resample(self.conv_in(x))
        size = tuple(self.config.latent_shape[1:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.blocks(x)
        return self.conv_out(F.silu(self.norm_out(x)))

    @torch.no_grad()
    def initial_latents(self, features: torch.Tensor | FeatureSet, batch_size: int = 32) -> torch.Tensor:
        """Features -> latents ``(N, latent_channels, H / f, W / f)`` (float32, on the mapper's device).

        This is the hybrid start: the white-box optimization begins from these latents
        instead of noise.

        Raises:
            ValueError: features of another layer, target or input size, or non-finite.
        """
        return self.predict(check_model_input(self, features), batch_size)
