"""FeatureMapper: a target layer's features -> the diffusion latent (black-box inversion).

When the attacker has (image, feature) pairs but no gradients of the target, inversion
is a learned map. :class:`FeatureMapper` maps the features of one layer — spatial maps of
any stride, or pooled vectors — to the latent of a Stable Diffusion VAE
(``latent_channels x H/f x W/f``, ``f = 2 ** (len(vae.config.block_out_channels) - 1)``,
8 for the real SD VAE). Decoding that latent gives the black-box reconstruction; it can
also start the white-box optimization ("hybrid": :meth:`FeatureMapper.initial_latents`).

It is a diffusers ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` /
``from_pretrained`` write and read ``config.json`` (target, layer, input size, feature and
latent shapes) and the weights as safetensors. Training lives in :mod:`diffinv.training`.

Example:
    >>> vae = diffinv.pipelines.load_vae("path/to/stable-diffusion-v1-5")
    >>> mapper = FeatureMapper.for_target(target, "blocks.2", (256, 256), vae)
    >>> latents = mapper.initial_latents(feature_set)          # (N, 4, 32, 32)
    >>> images = decode_latents(vae, latents).clamp(0, 1)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..features import FeatureSet, check_features
from ..targets import TargetNetwork
from .vae import vae_scale_factor

__all__ = ["FeatureMapper", "check_model_input", "resolve_model_dir"]



def resolve_model_dir(path: str | os.PathLike, layer: str | None = None, kind: str = "mapper") -> Path:
    """A trained model folder: ``path`` itself, or ``path/<layer>`` for a folder of per-layer models.

    Raises:
        FileNotFoundError: with what was looked for.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if layer is not None and (path / layer / "config.json").is_file():
        return path / layer
    if not path.exists():
        raise FileNotFoundError(f"`{kind}` folder {str(path)!r} does not exist. Train one with `diffinv train-{kind}`.")
    found = sorted(p.parent.name for p in path.glob("*/config.json"))
    raise FileNotFoundError(
        f"`{kind}` folder {str(path)!r} has no config.json" + (f" and no sub-folder {layer!r}" if layer else "")
        + (f"; it has models for {', '.join(found)}." if found else ". Train one with `diffinv train-" + kind + "`.")
    )


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


def _feature_error(features_shape, expected, config) -> str:
    return (
        f"`features` have shape {tuple(features_shape)} but this model was trained on layer {config.layer!r} of "
        f"{config.target!r} at input size {tuple(config.input_size or ())}, whose features are "
        f"(N, {', '.join(map(str, expected))}). Use the model trained for this layer and size."
    )


def check_model_input(
    model, features: torch.Tensor | FeatureSet, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Checks features (tensor or FeatureSet) against a mapper's/decoder's config; returns the tensor.

    ``image_size``: the input size the features are for (what ``resolve_features`` found), checked
    against the size the model was trained at.
    """
    config = model.config
    if image_size is not None and config.input_size and tuple(image_size) != tuple(config.input_size):
        raise ValueError(
            f"`features` are for input size {tuple(image_size)} but this model was trained at "
            f"{tuple(config.input_size)}."
        )
    if isinstance(features, FeatureSet):
        if config.layer and features.layer != config.layer:
            raise ValueError(
                f"`features` come from layer {features.layer!r} but this model was trained on layer {config.layer!r}."
            )
        if config.target and features.target != config.target:
            raise ValueError(
                f"`features` come from target {features.target!r} but this model was trained on {config.target!r}."
            )
        if config.input_size and tuple(features.input_size) != tuple(config.input_size):
            raise ValueError(
                f"`features` were extracted at input size {tuple(features.input_size)} but this model was trained "
                f"at {tuple(config.input_size)}."
            )
        features = features.features
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"`features` must be a torch.Tensor or a FeatureSet, got {type(features).__name__}.")
    expected = tuple(config.feature_shape)
    if features.ndim < 2 or tuple(features.shape[1:]) != expected:
        raise ValueError(_feature_error(features.shape, expected, config))
    check_features(features, expected)
    return features


# ---------------------------------------------------------------------- the mapper
class FeatureMapper(ModelMixin, ConfigMixin):
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
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
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
                resample += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(hid, hid, 3, padding=1), _ResBlock(hid)]
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
    ) -> "FeatureMapper":
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

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Stores per-channel mean/std of training features (``(N, C, ...)``) for standardization."""
        dims = [0] + list(range(2, features.ndim))
        self.feature_mean.copy_(features.float().mean(dim=dims))
        self.feature_std.copy_(features.float().std(dim=dims).clamp_min(1e-6))

    # ------------------------------------------------------------------ forward
    def _standardize(self, features: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (features.ndim - 2)
        return (features - self.feature_mean.view(shape)) / self.feature_std.view(shape)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, *feature_shape)`` -> ``(N, *latent_shape)`` scaled latents."""
        x = self._standardize(features.to(self.conv_in.weight.dtype))
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
        features = check_model_input(self, features)
        was_training = self.training
        self.eval()
        try:
            out = [self(chunk.to(self.device)).float() for chunk in features.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)
