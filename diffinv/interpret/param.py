"""Image parameterizations for feature visualization: ``(params, image_fn)`` as in lucent.

``image_fn(train=True)`` renders ``(N, 3, H, W)`` images in [0, 1] from ``params``; ``train=False``
drops training-time randomness (the DIP input noise). Every tensor in ``params`` has one block
per image along its first dimension, as :func:`diffinv.optimization.run_optimization` needs.

* :func:`fourier_image` — lucid's decorrelated parameterization (the pixel inverter's default,
  :func:`~diffinv.inverters.pixel.fourier_parameterization`): the image's spectrum, scaled
  by 1/frequency, plus a linear colour decorrelation (the square root of ImageNet's colour
  covariance) before the sigmoid. Steps then move all frequencies and colours at comparable
  rates, which is why lucid's visualizations look natural.
* :func:`pixel_image` — the pixel inverter's sigmoid logits (:func:`~diffinv.inverters.pixel.pixel_parameterization`).
* :func:`dip_image` — the DIP inverter's generators (:func:`~diffinv.inverters.dip.dip_parameterization`).
* :func:`diffusion_image` — a K-step Stable Diffusion sampler and VAE from the initial latent
  (:meth:`~diffinv.pipelines.DiffInvPipeline.render`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..inverters.dip import dip_parameterization
from ..inverters.pixel import COLOR_CORRELATION_SVD_SQRT, fourier_parameterization, pixel_parameterization
from ..models.dip import check_dip_size

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "diffusion_image", "dip_image", "fourier_image", "pixel_image"]

ImageFn = Callable[..., torch.Tensor]


def _randn(shape, generator, device) -> torch.Tensor:
    where = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, device=where).to(device)


# Spectrum ``(n, 3, H, W // 2 + 1, 2)`` scaled by ``1 / freq ** decay_power``, inverse FFT, colour
# decorrelation, sigmoid: the pixel inverter's default parameterization, under the name the other
# parameterizations of this module follow.
fourier_image = fourier_parameterization


def pixel_image(
    n: int, size: tuple[int, int], *, generator: torch.Generator | None = None, device=None
) -> tuple[list[torch.Tensor], ImageFn]:
    """The pixel inverter's parameterization: sigmoid of per-pixel logits (grey + small noise)."""
    params, render = pixel_parameterization(n, size, generator=generator, device=device)
    return params, lambda train=True: render()


def dip_image(
    n: int,
    size: tuple[int, int],
    *,
    channels: Sequence[int] = (16, 32, 32, 64),
    input_noise_std: float = 1.0 / 30.0,
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[list[torch.Tensor], ImageFn]:
    """N independent DIP generators from fixed noise (the DIP inverter's prior); ``train=True`` perturbs the noise.

    Raises:
        ValueError: ``size`` is not divisible by ``2 ** len(channels)``.
    """
    check_dip_size(size, len(channels), "size")
    net, image_fn = dip_parameterization(
        n, size, channels=tuple(channels), input_noise_std=input_noise_std, generator=generator, device=device
    )
    return list(net.parameters()), image_fn


def diffusion_image(
    pipe,
    n: int,
    size: tuple[int, int],
    *,
    prompt: str | list[str] = "",
    num_inference_steps: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[list[torch.Tensor], ImageFn]:
    """Initial latents of a :class:`~diffinv.pipelines.DiffInvPipeline`'s K-step sampler, rendered by it.

    Raises:
        ValueError: ``size`` is not a multiple of the VAE's scale factor.
    """
    factor = pipe.vae_scale_factor
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"the diffusion model makes images whose sides are multiples of {factor}, got {tuple(size)}.")
    device = pipe._execution_device
    shape = (n, pipe.unet.config.in_channels, size[0] // factor, size[1] // factor)
    sigma = pipe.chain_scheduler(num_inference_steps, device).init_noise_sigma
    latents = (sigma * _randn(shape, generator, device)).float().requires_grad_(True)

    def image_fn(train: bool = True) -> torch.Tensor:
        return pipe.render(
            latents, prompt, num_inference_steps=num_inference_steps, gradient_checkpointing=train
        ).float()

    return [latents], image_fn
