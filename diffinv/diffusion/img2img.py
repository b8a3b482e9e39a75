"""img2img (SDEdit) on clean latents: noise them to a strength and denoise with the tail of the deterministic chain.

:func:`img2img_steps` is the one definition of img2img strength in diffinv: :meth:`Img2ImgMixin.img2img`, the hybrid
starts of the pipeline call (``init="mapper"`` or ``"image"``, :mod:`~diffinv.diffusion.latents`) and the refinement
of :class:`~diffinv.inverters.mapper.MapperInverter` run the same chain (:meth:`Img2ImgMixin.img2img_chain`).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffinv.inverters.diffusion import CALL_DEFAULTS as DEFAULTS
from diffinv.models.vae import encode_latents
from diffinv.prompts import resolve_prompts

__all__ = ["Img2ImgMixin", "img2img_steps", "noised_start"]


def img2img_steps(num_inference_steps: int, strength: float) -> int:
    """The sampler steps that img2img at ``strength`` runs: ``max(1, round(K * strength))``.

    The one definition of img2img strength in diffinv, shared by :meth:`DiffInvPipeline.img2img`,
    the hybrid starts (``DiffInvPipeline.__call__(init="mapper" or "image")``) and the refinement of
    :class:`~diffinv.inverters.mapper.MapperInverter`: the clean latent is noised to the first
    timestep of the last ``img2img_steps(K, strength)`` steps of the K-step chain
    (:meth:`DiffInvPipeline.chain_scheduler`), which then run. Strength 1 runs the whole chain
    from (almost) pure noise; any strength > 0 runs at least one step.

    Args:
        num_inference_steps: K, the steps of the full chain (>= 1).
        strength: how far into the chain the start is noised, in (0, 1].

    Raises:
        ValueError: ``num_inference_steps`` is not a positive integer, or ``strength`` is not in (0, 1].

    Example:
        >>> img2img_steps(20, 0.3), img2img_steps(4, 0.1), img2img_steps(4, 1.0)
        (6, 1, 4)
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}.")
    return max(1, round(num_inference_steps * strength))


def noised_start(
    clean: torch.Tensor, scheduler: DDIMScheduler, generator: torch.Generator | list[torch.Generator] | None
) -> torch.Tensor:
    """Clean latents noised (fp32) to the first timestep of ``scheduler``'s chain, as img2img starts."""
    noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=torch.float32)
    return scheduler.add_noise(clean.float(), noise, scheduler.timesteps[:1])


class Img2ImgMixin:
    """img2img of :class:`~diffinv.pipelines.DiffInvPipeline`, and the VAE encode of its image start."""

    def img2img_chain(
        self, num_inference_steps: int, strength: float, device: torch.device | str | None = None
    ) -> DDIMScheduler:
        """The chain of img2img at ``strength``: the last :func:`img2img_steps` steps of :meth:`chain_scheduler`.

        Used by :meth:`img2img`, the hybrid starts (``init="mapper"``, ``"image"``) and, through :meth:`img2img`,
        by :class:`~diffinv.inverters.mapper.MapperInverter`.

        Raises:
            ValueError: ``strength`` is not in (0, 1] (see :func:`img2img_steps`).
        """
        steps = img2img_steps(num_inference_steps, strength)
        scheduler = self.chain_scheduler(num_inference_steps, device)
        scheduler.timesteps = scheduler.timesteps[num_inference_steps - steps :]
        return scheduler

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images in [0, 1] -> clean scaled VAE latents (the posterior mean), resized to ``size`` first when it
        differs: the start of ``init="image"`` (decode them with :func:`diffinv.models.decode_latents`)."""
        image = image.to(self._execution_device, torch.float32)
        if size is not None and tuple(image.shape[-2:]) != tuple(size):
            image = torch.nn.functional.interpolate(
                image, size=size, mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 1)
        return encode_latents(self.vae, image).float().contiguous()

    @torch.no_grad()
    def img2img(
        self,
        latents: torch.Tensor,
        strength: float,
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = DEFAULTS["guidance_scale"],
        generator: torch.Generator | list[torch.Generator] | None = None,
        progress_bar_config: dict | None = None,
    ) -> torch.Tensor:
        """img2img (SDEdit) on clean latents: noise them to ``strength`` and denoise with the deterministic chain.

        The latents are noised to the first timestep of :meth:`img2img_chain` (the last
        ``img2img_steps(num_inference_steps, strength)`` steps of the K-step DDIM chain of
        :meth:`chain_scheduler`) and those steps run; the same chain as the hybrid start
        ``__call__(init="mapper"|"image")``. No gradients.

        Args:
            latents: ``(N, C, h, w)`` clean scaled latents (e.g. a FeatureMapper's prediction).
            strength: in (0, 1]: the fraction of the chain that runs (1: from almost pure noise).
            num_inference_steps: K, the steps of the full chain.
            prompt, negative_prompt, guidance_scale: text conditioning (``guidance_scale > 1``:
                classifier-free guidance), as in :meth:`render`.
            generator: seeds the noise.
            progress_bar_config: this call's progress bar settings over the pipeline's (not stored).

        Returns:
            ``(N, C, h, w)`` the denoised clean latents, fp32, on the execution device (images:
            ``diffinv.models.decode_latents(pipe.vae, latents)``).

        Raises:
            ValueError: ``strength`` is not in (0, 1].

        Example:
            >>> refined = pipe.img2img(mapper.initial_latents(feature_set), strength=0.3, generator=g)
        """
        device = self._execution_device
        scheduler = self.img2img_chain(num_inference_steps, strength, device)
        prompts = resolve_prompts(prompt, len(latents))
        negative = resolve_prompts(negative_prompt, len(latents), "negative_prompt") if negative_prompt else None
        embeds = self.encode_prompt(prompts, device, guidance_scale > 1.0, negative)
        latents = noised_start(latents.to(device, torch.float32), scheduler, generator)
        with self._call_progress_bar(len(scheduler.timesteps), progress_bar_config) as progress_bar:
            latents, _ = self._sample(
                latents,
                embeds,
                scheduler,
                guidance_scale,
                gradient_checkpointing=False,
                decode=False,
                progress_bar=progress_bar,
            )
        return latents
