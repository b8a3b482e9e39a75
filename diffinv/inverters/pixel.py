"""Optimize the pixels: Mahendran & Vedaldi (CVPR 2015) in one of two parameterizations.

* ``"fourier"`` (the default): lucid's spectrum + colour-decorrelated parameterization
  (:func:`fourier_parameterization`, shared with feature visualization) with high frequencies
  damped by the layer's stride (:func:`fourier_decay_power`: 1.2 down to 0.8, lucid's 1.0 at
  stride 16), no prior, Adam at a constant
  0.05 (annealing it loses several dB in 300 iterations), the best iterate kept per image and
  the scale-free feature loss (``nmse``). Side by side with torch-lucent's plain inversion:
  ``examples/benchmark_lucent.py``.
* ``"sigmoid"`` (the paper's setting): per-pixel logits, a total-variation prior and random
  jitter (a small random translation every step), cosine-annealed Adam at 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..losses import total_variation
from .base import RefiningInverter
from .config import COMPILE_HELP, FEATURE_LOSSES, ImageOptimizerConfig, OptionError, option
from .optimizing import feature_stride, optimize

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "PARAMETERIZATIONS",
    "PARAMETERIZATION_DEFAULTS",
    "REFINE_LEARNING_RATE",
    "PixelConfig",
    "PixelInverter",
    "fourier_decay_power",
    "fourier_parameterization",
    "pixel_parameterization",
]

# lucid's square root of the ImageNet colour covariance (from its SVD), columns normalized below.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def pixel_parameterization(
    n: int,
    size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    device=None,
    init: torch.Tensor | None = None,
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


def fourier_parameterization(
    n: int,
    size: tuple[int, int],
    *,
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    generator: torch.Generator | None = None,
    device=None,
    init: torch.Tensor | None = None,
):
    """Returns ``(params, image_fn)``: lucid's decorrelated parameterization of ``(n, 3, H, W)`` images.

    The parameter is the spectrum ``(n, 3, H, W // 2 + 1, 2)`` (real, imaginary), scaled by
    ``1 / freq ** decay_power``; ``image_fn`` takes its inverse FFT, applies the linear colour
    decorrelation (the square root of ImageNet's colour covariance) and a sigmoid. Adam's steps
    then move all frequencies and colours at comparable rates: the images look natural in feature
    visualization, and an inversion recovers the coarse structure first instead of high-frequency
    noise. ``image_fn(train=True)`` takes (and ignores) the flag of :mod:`diffinv.interpret.param`.

    Args:
        sd: std of the initial spectrum (a grey image with faint coloured noise).
        decay_power: how strongly high frequencies are damped.
        decorrelate: apply the colour decorrelation (else the three channels are independent).
        init: images in [0, 1] to start from instead (their exact spectrum, e.g. another method's
            reconstruction to refine).
    """
    h, w = size
    freqs = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2)
    scale = (1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power)[None, None, ..., None].to(device)
    colors = (COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()).to(device)
    if init is not None:
        if init.ndim != 4 or init.shape[0] != n or init.shape[1] != 3 or tuple(init.shape[-2:]) != (h, w):
            raise ValueError(f"`init` must be ({n}, 3, {h}, {w}) images, got {tuple(init.shape)}.")
        logits = torch.logit(init.detach().to(device).float().clamp(1e-3, 1 - 1e-3))
        if decorrelate:
            logits = torch.einsum("ndhw,cd->nchw", logits, torch.linalg.inv(colors))
        spectrum = torch.view_as_real(torch.fft.rfftn(4.0 * logits, s=(h, w), norm="ortho")) / scale
    else:
        where = generator.device if generator is not None else "cpu"
        spectrum = sd * torch.randn(n, 3, *freqs.shape, 2, generator=generator, device=where).to(device)
    spectrum = spectrum.contiguous().requires_grad_(True)

    def image_fn(train: bool = True) -> torch.Tensor:
        image = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(h, w), norm="ortho") / 4.0
        if decorrelate:
            image = torch.einsum("nchw,dc->ndhw", image, colors)
        return torch.sigmoid(image)

    return [spectrum], image_fn


# The pixel inverter's parameterizations: ``(n, size, *, generator, device, init) -> (params, image_fn)``.
PARAMETERIZATIONS = {"fourier": fourier_parameterization, "sigmoid": pixel_parameterization}

# Each parameterization's schedule and priors (what ``None`` means in :class:`PixelInverter`'s arguments).
PARAMETERIZATION_DEFAULTS = {
    "fourier": {"learning_rate": 0.05, "tv_weight": 0.0, "jitter": 0, "lr_schedule": False},
    "sigmoid": {"learning_rate": 0.1, "tv_weight": 0.05, "jitter": 1, "lr_schedule": True},
}


# A refinement's step size (``START+pixel``): DIP's images are close already, the default 0.05 overshoots them.
# dip+pixel, 4 demo photos, 300 + 300 iterations (examples/benchmark_lucent.py): 28.4 dB at blocks.1.
REFINE_LEARNING_RATE = 0.02


def fourier_decay_power(stride: float) -> float:
    """The Fourier inversion's ``decay_power`` for features of a given stride (input pixels per
    feature pixel): ``1.2 - 0.2 * log2(stride / 8)``, clipped to [0.8, 1.2].

    Damping high frequencies more makes the coarse image converge faster where the features keep
    spatial detail; less damping helps where they do not. Measured on the demo photos, 300
    iterations, EfficientNet-Lite0 at 128 px (``examples/benchmark_lucent.py``), PSNR by
    ``decay_power``: ``blocks.1`` (stride 4) 1.0: 21.4, 1.2: 23.2, 1.5: 23.0; ``blocks.2`` (8)
    1.0: 16.9, 1.2: 17.3, 1.4: 16.2; ``blocks.4`` (16) 0.9: 11.9, 1.0: 12.0, 1.2: 10.8;
    ``blocks.6`` (32) 0.8: 11.5, 0.9: 11.2, 1.0: 10.9, 1.2: 10.1.
    """
    return min(1.2, max(0.8, 1.2 - 0.2 * math.log2(max(stride, 1e-6) / 8)))


def _jitter(images: torch.Tensor, pixels: int, generator: torch.Generator | None) -> torch.Tensor:
    if pixels <= 0:
        return images
    dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


@dataclass(frozen=True)
class PixelConfig(ImageOptimizerConfig):
    """The pixel inverter's hyper-parameters: Fourier + decorrelated (default) or sigmoid pixels with a
    TV prior and jitter. ``None`` takes the parameterization's own value (:data:`PARAMETERIZATION_DEFAULTS`),
    filled in when the config is made, so that its settings name the values used.

    Attributes:
        iterations: optimization steps.
        parameterization: ``"fourier"`` or ``"sigmoid"`` (:data:`PARAMETERIZATIONS`).
        learning_rate: Adam step size on the parameters (fourier 0.05, sigmoid 0.1).
        tv_weight: weight of the total-variation prior (per pixel mean; fourier 0, sigmoid 0.05).
        tv: ``"isotropic"`` or ``"anisotropic"``.
        tv_beta: the TV exponent (2 smooth, 1 edge-preserving).
        jitter: maximum random translation in pixels, 0 disables it (fourier 0, sigmoid 1).
        loss: feature loss, ``"nmse"``, ``"mse"`` or ``"cosine"``.
        lr_schedule: cosine-anneal the learning rate to 0 (fourier no, sigmoid yes).
        decay_power: fourier only: how strongly the spectrum's high frequencies are damped (default:
            :func:`fourier_decay_power` of the layer's stride).
        temporal_weight: smoothing between consecutive images of the batch (video frames).
        compile: run the target through ``torch.compile`` (``True``: inductor; or a backend name;
            :mod:`diffinv.compilation`).
    """

    method = "pixel"
    iterations: int = option(300, "positive_int", help="optimization iterations")
    parameterization: str = option(
        "fourier",
        choices=("fourier", "sigmoid"),
        flag="--param",
        help="fourier (Fourier + colour-decorrelated; the default) or sigmoid (per-pixel logits, TV, jitter)",
    )
    learning_rate: float | None = option(None, "optional_non_negative")
    tv_weight: float | None = option(None, "optional_non_negative")
    tv: str = option("isotropic", choices=("isotropic", "anisotropic"))
    tv_beta: float = option(2.0, "positive")
    jitter: int | None = option(None, "optional_non_negative_int")
    loss: str = option("nmse", choices=FEATURE_LOSSES)
    lr_schedule: bool | None = option(None, "optional_bool")
    decay_power: float | None = option(None, "optional_positive")
    temporal_weight: float = option(0.0, "non_negative")
    compile: bool | str = option(False, "compile", help=COMPILE_HELP)

    def __post_init__(self):
        super().__post_init__()
        if self.decay_power is not None and self.parameterization != "fourier":
            raise OptionError(
                self.method,
                "decay_power",
                self.decay_power,
                message=f"method 'pixel': `decay_power` applies to the 'fourier' parameterization, "
                f"not {self.parameterization!r}.",
            )
        for name, value in PARAMETERIZATION_DEFAULTS[self.parameterization].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


class PixelInverter(RefiningInverter):
    """Pixel optimization: Fourier + colour-decorrelated (default, as lucent) or sigmoid pixels with a TV
    prior and jitter (Mahendran & Vedaldi).

    With ``start`` it refines another method's estimate (a hybrid, ``START+pixel``): the
    parameterization starts from the start's images exactly (the start is the first iterate, so the
    best-iterate rule keeps it where the refinement does not lower the loss). ``dip+pixel``, DIP
    refined at :data:`REFINE_LEARNING_RATE`, is diffinv's strongest white-box method on CPU.

    Args:
        target: the network whose features are inverted.
        config: a :class:`PixelConfig` (default: its defaults).
        start: the hybrid start (see :class:`~diffinv.inverters.base.RefiningInverter`): an
            :class:`Inverter` of the same target, image files or a tensor.
        **options: fields of :class:`PixelConfig` (``iterations``, ``learning_rate``, ``tv_weight``, ...).

    Raises:
        ValueError: an option :class:`PixelConfig` does not have, or a value it refuses.

    Example:
        >>> out = PixelInverter(target, iterations=300)(feature_set)  # PixelInverter(..., parameterization="sigmoid")
        >>> out.images.shape
        torch.Size([4, 3, 128, 128])
    """

    name = "pixel"
    config_class = PixelConfig
    roles = frozenset({"refiner"})
    refine_defaults = {"learning_rate": REFINE_LEARNING_RATE}

    @classmethod
    def memory_cost(cls, options, shape):
        """The image, its gradient and Adam's two moments, for one batch."""
        return {"pixel optimizer state": 6 * 3 * 4 * shape.pixels}

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
        """``init``: images to start from (warm start); ``anchor``: a fixed ``(1, 3, H, W)`` image
        before the first one in the temporal term (the previous video frame)."""
        c = self.config
        extra = {}
        if c.parameterization == "fourier":
            power = fourier_decay_power(feature_stride(features, size)) if c.decay_power is None else c.decay_power
            extra["decay_power"] = power
        make = PARAMETERIZATIONS[c.parameterization]
        start_info = {}
        if self.hybrid and init is None:  # a video's warm start (init) replaces the start after the first frame
            init, start_info = self._start_estimate(features, layer, size, generator=generator, progress=progress)
            init = init.to(self.device).expand(len(features), -1, -1, -1)
        params, render = make(len(features), size, generator=generator, device=self.device, init=init, **extra)
        images, history, info = optimize(
            params,
            lambda: _jitter(render(), c.jitter, generator),
            self.target,
            features,
            layer,
            iterations=c.iterations,
            lr=c.learning_rate,
            lr_schedule=c.lr_schedule,
            loss=c.loss,
            prior_fn=(lambda x: c.tv_weight * total_variation(x, c.tv, c.tv_beta)) if c.tv_weight else None,
            temporal_weight=c.temporal_weight,
            temporal_fn=render,
            temporal_anchor=anchor,
            final_fn=render,
            desc=f"pixel {layer}",
            progress=progress,
            compile=c.compile,
            callback=callback,
            feature_transform=feature_transform,
            early_stop=early_stop,
        )
        return images, history, {**info, **start_info}
