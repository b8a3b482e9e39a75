"""Deep Image Prior (Ulyanov et al., CVPR 2018) for feature inversion.

An untrained encoder-decoder with skip connections (:class:`~diffinv.models.SkipGenerator`)
maps fixed noise to the image; its weights are optimized so that the target's features of
the output match. The network's structure is the prior: it fits natural images long before
it fits noise. N images are inverted by N independent generators run as one network.

Where the features keep little spatial detail (stride 32 and beyond, :data:`GREY_START_STRIDE`),
the generators start from a flat grey image (``grey_start``) instead of their random initial
pattern, which the feature loss there never undoes: every structure of the image is then one
the features asked for, as in the Fourier pixel inversion that starts from grey.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..compilation import backend, compiled
from ..models.dip import SkipGenerator, check_dip_size
from ..optimization import adam
from .base import Inverter
from .config import COMPILE_HELP, FEATURE_LOSSES, ImageOptimizerConfig, option
from .optimizing import feature_stride, optimize

__all__ = ["DIP_BYTES_PER_PIXEL", "GREY_START_STRIDE", "DIPConfig", "DIPInverter", "dip_parameterization"]

# ``grey_start=None`` starts from grey for features of this stride (input pixels per feature pixel) and beyond.
# EfficientNet-Lite0 at 128 px, 300 iterations, PSNR of the random start -> the grey start (2 seeds x 4 demo
# photos; 16 ImageNet photos, paired): blocks.6 (stride 32) 10.42 -> 11.63 on the demo photos and
# 11.06 -> 12.04 (+0.98 +- 0.42, 12 of 16 better) on ImageNet; blocks.4 (16) 13.88 -> 13.22 and
# 12.00 -> 12.92 (+0.92 +- 0.86): no clear gain; blocks.1 (4) 23.79 -> 22.59 and blocks.2 (8) 18.42 -> 17.27:
# worse.
GREY_START_STRIDE = 32
# The DIP generator (diffinv.models.SkipGenerator, default channels) per image pixel: its activations
# (leaf-module outputs, measured on the meta device: 616 B), its input noise and the noisy copy (256 B),
# and their gradients, rounded up. tests/test_bad_inputs.py checks that it stays above the measured value.
DIP_BYTES_PER_PIXEL = 1600


def dip_parameterization(
    n: int,
    size: tuple[int, int],
    *,
    in_channels: int = 32,
    channels: tuple[int, ...] = (16, 32, 32, 64),
    input_noise_std: float = 1.0 / 30.0,
    grey_start: bool = False,
    generator: torch.Generator | None = None,
    device=None,
    compile: bool | str = False,
) -> tuple[SkipGenerator, Callable[..., torch.Tensor]]:
    """``(net, render)``: N independent DIP generators from a fixed input noise ``z``, and
    ``render(train=True)``, the ``(n, 3, H, W)`` images in [0, 1]; ``train`` perturbs ``z`` by
    ``input_noise_std`` (DIP's regularization), ``train=False`` renders from ``z`` itself.
    ``grey_start`` zeroes the generators' output layer: the first images are flat grey (0.5).

    ``generator`` seeds the weights and ``z``; ``compile`` runs the generator through
    ``torch.compile`` (:mod:`diffinv.compilation`) when rendering.
    """
    if generator is not None:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    net = SkipGenerator(n, in_channels=in_channels, channels=channels).to(device).train()
    if grey_start:
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)
    z = 0.1 * torch.rand(1, n * net.in_channels, *size, generator=generator).to(device)
    z = z.contiguous(memory_format=torch.channels_last)  # the generator's layout, converted once
    generate = net if backend(compile) is None else compiled(net, compile=compile)

    def render(train: bool = True) -> torch.Tensor:
        if train and input_noise_std > 0:
            # drawn channels-last (NHWC) and viewed as NCHW: randn_like(z) on a channels-last z
            # takes a slow strided path (62 ms instead of 8 ms a step for the demo's 4 generators)
            noise = torch.randn(1, *size, z.shape[1], device=z.device).permute(0, 3, 1, 2)
            return generate(z + input_noise_std * noise)
        return generate(z)

    return net, render


@dataclass(frozen=True)
class DIPConfig(ImageOptimizerConfig):
    """The DIP inverter's hyper-parameters.

    Attributes:
        iterations: optimization steps.
        learning_rate: Adam step size on the generator weights.
        channels: generator channels per level (a small net is enough and fast on CPU); images must
            be divisible by ``2 ** len(channels)``.
        in_channels: channels of the fixed input noise per image.
        input_noise_std: std of the perturbation of the input noise at every step
            (DIP's regularization; 0 disables it).
        loss: feature loss, ``"nmse"``, ``"mse"`` or ``"cosine"``.
        temporal_weight: smoothing between consecutive output images (video frames). The
            optimized variables are generator weights, which have no frame-to-frame
            correspondence, so the output images are what is smoothed.
        grey_start: start from flat grey images (the generators' output layer zeroed) instead of their
            random initial pattern; ``None`` (default): for features of stride >= :data:`GREY_START_STRIDE`.
        init_iterations: with ``invert(init=images)``, steps of a pixel MSE pre-fit of the
            generators to ``init`` before the feature loss (a warm start).
        compile: run the generator and the target through ``torch.compile`` (``True``: inductor;
            or a backend name; :mod:`diffinv.compilation`).
    """

    method = "dip"
    iterations: int = option(300, "positive_int", help="optimization iterations")
    learning_rate: float = option(0.01, "non_negative")
    channels: tuple[int, ...] = option((16, 32, 32, 64), "channels")
    in_channels: int = option(32, "positive_int")
    input_noise_std: float = option(1.0 / 30.0, "non_negative")
    loss: str = option("nmse", choices=FEATURE_LOSSES)
    temporal_weight: float = option(0.0, "non_negative")
    grey_start: bool | None = option(
        None,
        "optional_bool",
        flag="--dip-start",
        values={"grey": True, "random": False},
        help="start from flat grey images or from the random generators' own pattern "
        "(default: grey where the features' stride is 32 or more, random below)",
    )
    init_iterations: int = option(100, "non_negative_int")
    compile: bool | str = option(False, "compile", help=COMPILE_HELP)


class DIPInverter(Inverter):
    """Deep Image Prior inversion.

    Args:
        target: the network whose features are inverted.
        config: a :class:`DIPConfig` (default: its defaults).
        **options: fields of :class:`DIPConfig` (``iterations``, ``learning_rate``, ``channels``, ...).

    Raises:
        ValueError: an option :class:`DIPConfig` does not have, or a value it refuses.

    Example:
        >>> out = DIPInverter(target, iterations=300)(feature_set)
    """

    name = "dip"
    config_class = DIPConfig
    roles = frozenset({"start"})

    @classmethod
    def memory_cost(cls, options, shape):
        """The generators' activations and input noise for one batch (:data:`DIP_BYTES_PER_PIXEL`)."""
        return {"dip generators": DIP_BYTES_PER_PIXEL * shape.pixels}

    def check_image_size(self, size: tuple[int, int]) -> None:
        check_dip_size(size, len(self.config.channels))

    def _reconstruct(
        self,
        features,
        layer,
        size,
        *,
        generator,
        progress,
        init=None,
        anchor=None,
        callback=None,
        feature_transform=None,
        early_stop=None,
    ):
        """``init``: images to pre-fit the generators to (warm start); ``anchor``: a fixed
        ``(1, 3, H, W)`` image before the first one in the temporal term (the previous frame)."""
        n, c = len(features), self.config
        grey = feature_stride(features, size) >= GREY_START_STRIDE if c.grey_start is None else c.grey_start
        net, render = dip_parameterization(
            n,
            size,
            in_channels=c.in_channels,
            channels=c.channels,
            input_noise_std=c.input_noise_std,
            grey_start=grey,
            generator=generator,
            device=self.device,
            compile=c.compile,
        )

        if init is not None:
            if tuple(init.shape) != (n, 3, *size):
                raise ValueError(f"`init` must be (N, 3, H, W) = {(n, 3, *size)}, got {tuple(init.shape)}.")
            _prefit(net, render, init.detach().to(self.device).float(), c.init_iterations, c.learning_rate)

        images, history, info = optimize(
            list(net.parameters()),
            render,
            self.target,
            features,
            layer,
            iterations=c.iterations,
            lr=c.learning_rate,
            loss=c.loss,
            temporal_weight=c.temporal_weight,
            temporal_fn=lambda: render(train=False),
            temporal_anchor=anchor,
            final_fn=lambda: render(train=False),
            desc=f"dip {layer}",
            progress=progress,
            compile=c.compile,
            callback=callback,
            feature_transform=feature_transform,
            early_stop=early_stop,
        )
        return images, history, {**info, "grey_start": grey}


@torch.enable_grad()
def _prefit(net: nn.Module, render, images: torch.Tensor, iterations: int, lr: float) -> None:
    """Fits the generators' output to ``images`` (pixel MSE): DIP's warm start."""
    optimizer = adam(list(net.parameters()), lr)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        loss = (render() - images).pow(2).mean()
        if not torch.isfinite(loss):
            continue
        loss.backward()
        optimizer.step()
