"""The output of :class:`~diffinv.pipelines.DiffInvPipeline`: a diffusers ``BaseOutput``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

__all__ = ["DiffInvPipelineOutput"]


@dataclass
class DiffInvPipelineOutput(BaseOutput):
    """Output of :class:`~diffinv.pipelines.DiffInvPipeline`.

    Attributes:
        images: the reconstructions: a list of PIL images, a ``(N, H, W, 3)`` numpy array or a
            ``(N, 3, H, W)`` tensor in [0, 1] (``output_type``), or the final VAE latents
            (``output_type="latent"``).
        loss_history: ``(iterations, N)`` per-image loss (feature loss + latent prior) at each
            optimization iteration; NaN where that iteration's loss was not finite.
        feature_residual: ``(N,)`` ``||f(x_hat) - f|| / ||f||`` of the returned images.
        prompts: the prompt used for each image (after ``@file`` references and the automatic
            class prompt are resolved).
        skipped_steps: iterations whose loss or gradient was not finite (no update was made).
        latents: ``(N, C, h, w)`` the optimized initial latents ``z_T`` (fp32, CPU): feed them back
            as ``latents=`` to continue, or to :meth:`DiffInvPipeline.render`.
        fp32_decodes: ``(N,)`` per image, the iterations whose fp16 decode in the loop was not finite and
            was redone in fp32 (always 0 for fp32 and bf16 decoders).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    loss_history: torch.Tensor
    feature_residual: torch.Tensor
    prompts: list[str]
    skipped_steps: int
    latents: torch.Tensor
    fp32_decodes: torch.Tensor
