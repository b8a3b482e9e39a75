"""Deep Image Prior (Ulyanov et al., CVPR 2018) for feature inversion.

An untrained encoder-decoder with skip connections maps fixed noise to the image; its
weights are optimized so that the target's features of the output match. The network's
structure is the prior: it fits natural images long before it fits noise.

N images are inverted by N *independent* generators run as one network: every
convolution is grouped (``groups=N``), so image ``i`` only ever sees its own weights,
and BatchNorm over the batch of one normalizes each image's channels by themselves.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..features import FeatureSet
from ..metrics import feature_residual
from ..targets import TargetNetwork
from .base import InversionOutput, Inverter, optimize, resolve_features

__all__ = ["DIPInverter", "SkipGenerator"]


def _conv(cin: int, cout: int, groups: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin * groups, cout * groups, kernel, stride=stride, padding=kernel // 2, groups=groups, padding_mode="reflect"),
        nn.BatchNorm2d(cout * groups),
        nn.LeakyReLU(0.2, inplace=True),
    )


class SkipGenerator(nn.Module):
    """The DIP "skip" hourglass for ``groups`` independent images.

    Args:
        groups: number of independent generators (images).
        in_channels: channels of the input noise per image.
        channels: channels per level (down and up), per image.
        skip_channels: channels of each skip connection, per image.
    """

    def __init__(self, groups: int = 1, in_channels: int = 32, channels=(32, 64, 64, 128), skip_channels: int = 4):
        super().__init__()
        self.groups, self.in_channels = groups, in_channels
        self.down, self.skip, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.skip.append(_conv(cin, skip_channels, groups, kernel=1))
            self.down.append(nn.Sequential(_conv(cin, c, groups, stride=2), _conv(c, c, groups)))
            cin = c
        for i in reversed(range(len(channels))):
            c_out = channels[i - 1] if i > 0 else channels[0]
            self.up.append(_conv(cin + skip_channels, c_out, groups))
            cin = c_out
        self.head = nn.Conv2d(cin * groups, 3 * groups, 1, groups=groups)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: ``(1, groups * in_channels, H, W)`` -> images ``(groups, 3, H, W)`` in [0, 1]."""
        skips, x = [], z
        for skip, down in zip(self.skip, self.down):
            skips.append(skip(x))
            x = down(x)
        for up, s in zip(self.up, reversed(skips)):
            x = self.upsample(x)
            x = up(_cat_groups(x, s, self.groups))
        out = torch.sigmoid(self.head(x))
        return out.view(self.groups, 3, *out.shape[-2:])


def _cat_groups(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Concatenates channels image by image, so grouped convolutions stay per image."""
    n, _, h, w = a.shape
    return torch.cat([a.view(n, groups, -1, h, w), b.view(n, groups, -1, h, w)], dim=2).view(n, -1, h, w)


class DIPInverter(Inverter):
    """Deep Image Prior inversion.

    Args:
        target: the network whose features are inverted.
        iterations: optimization steps.
        learning_rate: Adam step size on the generator weights.
        channels: generator channels per level (a small net is enough and fast on CPU).
        input_noise_std: std of the perturbation of the input noise at every step
            (DIP's regularization; 0 disables it).
        loss: feature loss, ``"nmse"``, ``"mse"`` or ``"cosine"``.
        temporal_weight: smoothing between consecutive output images (video frames). The
            optimized variables are generator weights, which have no frame-to-frame
            correspondence, so the output images are what is smoothed.
        init_iterations: with ``invert(init=images)``, steps of a pixel MSE pre-fit of the
            generators to ``init`` before the feature loss (a warm start).

    Example:
        >>> out = DIPInverter(target, iterations=300)(feature_set)
    """

    name = "dip"

    def __init__(
        self,
        target: TargetNetwork,
        *,
        iterations: int = 300,
        learning_rate: float = 0.01,
        channels: tuple[int, ...] = (16, 32, 32, 64),
        input_noise_std: float = 1.0 / 30.0,
        loss: str = "nmse",
        temporal_weight: float = 0.0,
        init_iterations: int = 100,
    ):
        super().__init__(target)
        self.iterations, self.learning_rate, self.channels = iterations, learning_rate, tuple(channels)
        self.input_noise_std, self.loss, self.temporal_weight = input_noise_std, loss, temporal_weight
        self.init_iterations = init_iterations

    def invert(
        self,
        features: torch.Tensor | FeatureSet,
        image_size: tuple[int, int] | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
        init: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
    ) -> InversionOutput:
        """``init``: images to pre-fit the generators to (warm start); ``anchor``: a fixed
        ``(1, 3, H, W)`` image before the first one in the temporal term (the previous frame)."""
        start = time.perf_counter()
        feats, layer, size = resolve_features(self.target, features, image_size)
        levels = len(self.channels)
        if size[0] % 2**levels or size[1] % 2**levels:
            raise ValueError(f"DIP needs `image_size` divisible by {2 ** levels} (its {levels} levels), got {size}.")
        device = self.target.mean.device
        n = len(feats)
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        net = SkipGenerator(n, channels=self.channels).to(device).train()
        z = 0.1 * torch.rand(1, n * net.in_channels, *size, generator=generator).to(device)

        def render():
            if self.input_noise_std > 0:
                return net(z + self.input_noise_std * torch.randn_like(z))
            return net(z)

        if init is not None:
            if tuple(init.shape) != (n, 3, *size):
                raise ValueError(f"`init` must be (N, 3, H, W) = {(n, 3, *size)}, got {tuple(init.shape)}.")
            _prefit(net, render, init.detach().to(device).float(), self.init_iterations, self.learning_rate)

        images, history, info = optimize(
            list(net.parameters()),
            render,
            self.target,
            feats,
            layer,
            iterations=self.iterations,
            lr=self.learning_rate,
            loss=self.loss,
            temporal_weight=self.temporal_weight,
            temporal_fn=lambda: net(z),
            temporal_anchor=anchor,
            final_fn=lambda: net(z),
            desc=f"dip {layer}",
            progress=progress,
        )
        residual = feature_residual(self.target, images.to(device), feats, layer).cpu()
        return InversionOutput(images, history, residual, time.perf_counter() - start, self.name, info)


@torch.enable_grad()
def _prefit(net: nn.Module, render, images: torch.Tensor, iterations: int, lr: float) -> None:
    """Fits the generators' output to ``images`` (pixel MSE): DIP's warm start."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        loss = (render() - images).pow(2).mean()
        if not torch.isfinite(loss):
            continue
        loss.backward()
        optimizer.step()
