"""The decode of the pipeline's latents into images in [0, 1] (:func:`decode_images`): the one decode path
(:func:`~diffinv.models.vae.decode_latents`), compiled when asked, with the fp32 redo of a non-finite fp16 decode."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from diffinv.compilation import compiled
from diffinv.models.vae import decode_latents

__all__ = ["decode_images", "fp32_redo"]


def decode_images(
    vae: AutoencoderKL | AutoencoderTiny,
    latents: torch.Tensor,
    compile: bool | str = False,
    redone: torch.Tensor | None = None,
) -> torch.Tensor:
    """VAE decode: scaled latents -> images in [0, 1], fp32 (the one decode path, :func:`decode_latents`).

    ``vae``: the decoder (the pipeline's VAE, or the loop's lighter one). An fp16 decoder's images that are not
    finite are decoded again in fp32 (:func:`fp32_redo`) and marked in ``redone``, a boolean ``(N,)`` mask.
    """
    if compile:
        decode = compiled(vae, functools.partial(decode_latents, vae), "decode", compile)
    else:
        decode = functools.partial(decode_latents, vae)
    images = decode(latents)
    if vae.dtype == torch.float16:
        images = fp32_redo(vae, latents, images, decode, redone)
    return images.clamp(0, 1)


def fp32_redo(
    vae, latents: torch.Tensor, images: torch.Tensor, decode: Callable, redone: torch.Tensor | None
) -> torch.Tensor:
    """``images`` with those that are not finite decoded again by an fp32 copy of ``vae`` (made once, kept
    on it); the finite ones are decoded again in fp16 without them, so that no gradient flows through the
    non-finite activations. Checks on the host (one synchronisation per decode, fp16 only)."""
    bad = ~torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(bad.any()):
        return images
    if redone is not None:
        redone |= bad.cpu()
    fp32 = vae.__dict__.get("_diffinv_fp32")
    if fp32 is None:
        fp32 = type(vae).from_config(vae.config)
        fp32.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
        fp32 = vae.__dict__.setdefault("_diffinv_fp32", fp32.to(vae.device).eval().requires_grad_(False))
    redo = decode_latents(fp32, latents[bad].float())
    if bool(bad.all()):
        return redo
    order = torch.cat([(~bad).nonzero()[:, 0], bad.nonzero()[:, 0]])
    return torch.cat([decode(latents[~bad]), redo])[torch.argsort(order)]
