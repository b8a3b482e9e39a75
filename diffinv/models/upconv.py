"""UpconvNet (Dosovitskiy & Brox, CVPR 2016): a trained up-convolutional decoder, features -> pixels.

For feature maps the network is a few 3x3 convolutions at the feature resolution followed
by x2 "up-convolutions" (4x4 transposed convolutions, leaky ReLU 0.2) until the image size;
for pooled vectors, fully connected layers onto a 4x4 grid come first, as in the paper.
Training lives in :mod:`diffinv.jobs.training`; inversion in :mod:`diffinv.inverters.decoder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..features import FeatureSet
from ..targets import TargetNetwork
from .learned import FeatureStandardizer, check_model_input

__all__ = ["UpconvNet"]


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


class UpconvNet(ModelMixin, ConfigMixin, FeatureStandardizer):
    """The UpconvNet decoder: ``(N, *feature_shape)`` features -> ``(N, 3, H, W)`` images.

    Args:
        feature_shape: ``(C, h, w)`` feature maps or ``(C,)`` pooled vectors.
        image_size: ``(H, W)`` of the output.
        hidden_channels: channels at the feature resolution; halved at every up-convolution
            down to ``min_channels``.
        min_channels: the narrowest stage (the full-resolution ones).
        num_convs: 3x3 convolutions at the feature resolution.
        fc_channels: width of the fully connected layers (pooled vectors only).
        target, layer, input_size: what produced the features (recorded, and checked).

    The output is not squashed: training regresses pixels directly (a Euclidean loss as
    in the paper) and :meth:`reconstruct` clamps to [0, 1].
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        feature_shape: Sequence[int] = (40, 16, 16),
        image_size: Sequence[int] = (128, 128),
        hidden_channels: int = 128,
        min_channels: int = 32,
        num_convs: int = 2,
        fc_channels: int = 1024,
        target: str | None = None,
        layer: str | None = None,
        input_size: Sequence[int] | None = None,
    ):
        super().__init__()
        feature_shape, image_size = tuple(feature_shape), tuple(image_size)
        if len(feature_shape) not in (1, 3):
            raise ValueError(
                f"`feature_shape` must be (C, H, W) for feature maps or (C,) for pooled vectors, got {feature_shape}."
            )
        channels, ch = feature_shape[0], hidden_channels
        self.register_feature_stats(channels)
        if len(feature_shape) == 3:
            self.fc = None
            layers, start = [nn.Conv2d(channels, ch, 3, padding=1), _lrelu()], feature_shape[1]
        else:
            self.fc = nn.Sequential(
                nn.Linear(channels, fc_channels),
                _lrelu(),
                nn.Linear(fc_channels, fc_channels),
                _lrelu(),
                nn.Linear(fc_channels, ch * 16),
                _lrelu(),
            )
            layers, start = [], 4
        for _ in range(num_convs):
            layers += [nn.Conv2d(ch, ch, 3, padding=1), _lrelu()]
        for _ in range(max(0, math.ceil(math.log2(image_size[0] / start) - 1e-6))):
            out = max(min_channels, ch // 2)
            layers += [
                nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1),
                _lrelu(),
                nn.Conv2d(out, out, 3, padding=1),
                _lrelu(),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @classmethod
    def for_target(cls, target: TargetNetwork, layer: str, image_size: tuple[int, int], **kwargs) -> UpconvNet:
        """A decoder sized for ``target``'s ``layer`` at ``image_size``."""
        size = tuple(int(v) for v in image_size)
        return cls(
            feature_shape=target.feature_shape(layer, size),
            image_size=size,
            target=target.name,
            layer=layer,
            input_size=size,
            **kwargs,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features -> images (unclamped; about [0, 1] once trained)."""
        x = self.standardize(features.to(self.feature_std.dtype))
        if self.fc is not None:
            x = self.fc(x.flatten(1)).view(len(x), -1, 4, 4)
        x = self.body(x) + 0.5
        size = tuple(self.config.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def reconstruct(self, features: torch.Tensor | FeatureSet, batch_size: int = 32) -> torch.Tensor:
        """Checked features -> images in [0, 1] (float32, on the decoder's device)."""
        return self.predict(check_model_input(self, features), batch_size).clamp(0, 1)
