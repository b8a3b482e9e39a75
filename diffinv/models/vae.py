"""VAE helpers: the latent space of a Stable Diffusion autoencoder.

Scaled latents are what the diffusion model sees: ``(mean - shift) * scaling_factor`` of
the posterior; images are in [0, 1]. Loading a VAE by model name lives with the other
loaders in :mod:`diffinv.pipelines.loaders`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

__all__ = ["decode_latents", "encode_latents", "vae_scale_factor"]


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Spatial downsampling of the VAE: ``2 ** (number of blocks - 1)`` (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> scaled latents (the posterior mean, as the diffusion model sees them)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    mean = vae.encode((images * 2 - 1).to(vae.dtype)).latent_dist.mean
    return (mean - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images, ``(x + 1) / 2`` (not clamped, so losses keep their gradient)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample
    return (images.float() + 1) / 2
