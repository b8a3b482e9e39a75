"""The differentiable sampler of :class:`~diffinv.pipelines.DiffInvPipeline`: deterministic DDIM over K steps
(:func:`chain_scheduler`), run through backprop with each UNet call and the decode checkpointed (:meth:`_sample`),
and :meth:`render`, the images of initial latents."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler
from torch.utils.checkpoint import checkpoint

from diffinv.compilation import mark_step
from diffinv.inverters.diffusion import CALL_DEFAULTS as DEFAULTS
from diffinv.prompts import resolve_prompts

from .conditioning import noise_prediction
from .decoding import decode_images

__all__ = ["SamplerMixin", "chain_scheduler"]


def chain_scheduler(
    scheduler_config, num_inference_steps: int, device: torch.device | str | None = None
) -> DDIMScheduler:
    """The differentiable sampler: deterministic DDIM over ``num_inference_steps`` steps.

    Built from a model's scheduler configuration (betas, prediction type), whatever its
    class (PNDM, Euler for turbo models, ...), with ``"trailing"`` timestep spacing so that
    step one always starts from pure noise (t = T - 1), K = 1 included; the last step lands
    on the predicted clean latent (``set_alpha_to_one``), so K = 1 equals a one-step Euler
    sample of a turbo model; no sample clipping. ``DDIMScheduler.step`` keeps no state
    between calls, so the same chain is re-run every optimization iteration and
    backpropagated through.
    """
    scheduler = DDIMScheduler.from_config(
        scheduler_config,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        thresholding=False,
    )
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler


class SamplerMixin:
    """The sampler of :class:`~diffinv.pipelines.DiffInvPipeline` (its ``unet``, ``vae`` and ``scheduler``)."""

    def chain_scheduler(self, num_inference_steps: int, device: torch.device | str | None = None) -> DDIMScheduler:
        """The differentiable sampler of this pipeline's model: deterministic DDIM over ``num_inference_steps``
        steps, from its scheduler's configuration (:func:`chain_scheduler`)."""
        return chain_scheduler(self.scheduler.config, num_inference_steps, device)

    def _call_progress_bar(self, total: int, config: dict | None):
        """diffusers' progress bar, with this call's ``progress_bar_config`` over the pipeline's (not stored)."""
        if config is None:
            return self.progress_bar(total=total)
        from tqdm.auto import tqdm

        return tqdm(total=total, **{**getattr(self, "_progress_bar_config", {}), **config})

    def _sample(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        scheduler: DDIMScheduler,
        guidance_scale: float,
        offsets: Sequence[torch.Tensor] = (),
        gradient_checkpointing: bool = True,
        decode: bool = True,
        progress_bar=None,
        compile: bool | str = False,
        vae: AutoencoderKL | AutoencoderTiny | None = None,
        redone: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z_T -> (final latents z_0, images in [0, 1]); differentiable in the caller's grad mode.

        ``offsets[i]`` is added to the latent after step ``i`` (the optimized intermediate latents).
        ``decode=False`` skips the VAE (the images are ``None``); ``progress_bar.update()`` is called
        after each step when given; ``compile``: the UNet and the decoder run through ``torch.compile``
        (a new CUDA-graph step for ``"reduce-overhead"``/``"max-autotune"``); ``vae``: the decoder (default
        the pipeline's VAE) and ``redone``: see :func:`~diffinv.diffusion.decoding.decode_images`.
        """
        if compile:
            mark_step(compile)

        def call(fn, *args):
            if gradient_checkpointing and torch.is_grad_enabled():
                return checkpoint(fn, *args, use_reentrant=False)
            return fn(*args)

        # The scheduler's step indexes its (CPU) noise schedule with the timestep: given the device tensor,
        # that is a host-device synchronisation per step, which stalls the GPU between UNet calls; the
        # Python int gives the same step without it.
        step_timesteps = scheduler.timesteps.tolist()
        predict = functools.partial(noise_prediction, self.unet)
        for i, t in enumerate(scheduler.timesteps):
            noise = call(predict, latents, t, prompt_embeds, guidance_scale, compile)
            latents = scheduler.step(noise, step_timesteps[i], latents, eta=0.0, return_dict=False)[0]
            if i < len(offsets):
                latents = latents + offsets[i]
            if progress_bar is not None:
                progress_bar.update()
        if not decode:
            return latents, None
        vae = self.vae if vae is None else vae
        return latents, call(functools.partial(decode_images, vae, redone=redone), latents, compile)

    def render(
        self,
        latents: torch.Tensor,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = DEFAULTS["guidance_scale"],
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        gradient_checkpointing: bool = DEFAULTS["gradient_checkpointing"],
    ) -> torch.Tensor:
        """Images in [0, 1] ``(N, 3, H, W)`` from initial latents through the K-step sampler and the VAE.

        Differentiable with respect to ``latents`` when called with gradients enabled (each
        UNet call and the decode are checkpointed if ``gradient_checkpointing``). Used to
        generate in-range targets and to look at optimized latents.
        """
        device = self._execution_device
        prompts = resolve_prompts(prompt, len(latents))
        negative = resolve_prompts(negative_prompt, len(latents), "negative_prompt") if negative_prompt else None
        with torch.no_grad():
            embeds = self.encode_prompt(prompts, device, guidance_scale > 1.0, negative)
        scheduler = self.chain_scheduler(num_inference_steps, device)
        return self._sample(
            latents.to(device, torch.float32), embeds, scheduler, guidance_scale, (), gradient_checkpointing
        )[1]
