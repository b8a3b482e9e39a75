"""The initial latents ``z_T`` of the pipeline call (:func:`prepare_latents`): Gaussian noise, given latents, or a
hybrid start (:data:`STARTS`: a FeatureMapper's latents or an encoded image estimate, noised as img2img does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffinv.features import FeatureSet, check_images

from .img2img import noised_start

__all__ = ["STARTS", "Start", "prepare_latents", "start_images"]


@dataclass(frozen=True)
class Start:
    """A hybrid start of :meth:`DiffInvPipeline.__call__`, declared once: ``init=NAME`` takes the argument ``NAME``,
    which :attr:`clean` turns into the clean latent that img2img noises into the chain.

    Attributes:
        valid: whether a value of the argument can start the chain.
        needs: what the argument must be (the error says it when it is not).
        clean: ``(pipe, start, features, (height, width)) -> (N or 1, C, h, w)`` clean latents.
        exclusive: the argument is an error with another ``init``.
    """

    valid: Callable[[object], bool]
    needs: str
    clean: Callable
    exclusive: bool = False


# ``init`` -> its start: a FeatureMapper's latents, or any image estimate encoded by the VAE (``"noise"``: none).
STARTS = {
    "mapper": Start(
        lambda m: hasattr(m, "initial_latents"),
        "a trained FeatureMapper",
        lambda pipe, mapper, features, size: mapper.to(pipe._execution_device).initial_latents(features),
    ),
    "image": Start(
        lambda image: image is not None,
        "the start image(s), (N, 3, H, W) in [0, 1] or PIL",
        lambda pipe, image, features, size: pipe.encode_image(image, size),
        exclusive=True,
    ),
}


def start_images(image, batch_size: int) -> torch.Tensor:
    """``image=`` as a ``(N or 1, 3, H, W)`` float tensor in [0, 1]; a ValueError otherwise."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, list):
        if not image or not all(isinstance(im, PIL.Image.Image) for im in image):
            raise ValueError("`image` must be a (N, 3, H, W) tensor in [0, 1], a PIL image or a list of them.")
        image = torch.stack(
            [
                torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                for im in image
            ]
        )
    image = check_images(image, "image")
    if len(image) not in (1, batch_size):
        raise ValueError(
            f"`image` has {len(image)} images for {batch_size} feature maps; give one per map, or one for all."
        )
    return image


def prepare_latents(
    pipe,
    shape: tuple[int, int, int, int],
    scheduler: DDIMScheduler,
    device: torch.device,
    generator: torch.Generator | list[torch.Generator] | None,
    latents: torch.Tensor | None = None,
    init: str = "noise",
    start=None,
    features: torch.Tensor | FeatureSet | None = None,
) -> torch.Tensor:
    """The initial latents ``z_T`` ``(N, C, h, w)`` of a call of ``pipe``, fp32 on ``device``.

    ``latents`` as given (checked against ``shape``); for a hybrid start (``init``, one of :data:`STARTS`) the
    clean latent of ``start`` (a mapper's from ``features``, or the VAE-encoded image), noised as
    img2img does to the first timestep of ``scheduler``; else Gaussian noise times the scheduler's
    ``init_noise_sigma``.
    """
    height, width = shape[2] * pipe.vae_scale_factor, shape[3] * pipe.vae_scale_factor
    if init in STARTS:  # hybrid: the start's clean latent, noised as img2img does
        clean = STARTS[init].clean(pipe, start, features, (height, width)).to(device, torch.float32)
        clean = clean.expand(shape).contiguous() if len(clean) == 1 and shape[0] != 1 else clean
        if tuple(clean.shape) != shape:
            raise ValueError(f"the `{init}` start gives latents {tuple(clean.shape)}, the pipeline needs {shape}.")
        latents = noised_start(clean, scheduler, generator)
    elif latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * scheduler.init_noise_sigma
    elif tuple(latents.shape) != shape:
        raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape} for {height}x{width} images.")
    return latents.to(device, torch.float32).clone()
