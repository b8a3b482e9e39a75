"""Black-box inversion with a trained FeatureMapper: features -> latent -> VAE decode.

Optionally the decoded guess is refined by a few img2img steps of the diffusion model
(SDEdit): the mapper's latent is noised to strength ``s`` (``s * num_inference_steps``
of the schedule) and denoised by the UNet, which pulls it toward natural images while
keeping its layout. No gradient of the target is used anywhere.

Example:
    >>> inverter = MapperInverter(target, mapper="mappers/blocks.2", model="path/to/sd15")
    >>> out = inverter(feature_set)                       # mapper + VAE decode
    >>> pipe = load_pipeline("path/to/sd15")
    >>> out = MapperInverter.from_pipeline(target, pipe, mapper="mappers/blocks.2", strength=0.3)(feature_set)
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models import FeatureMapper, check_model_input, decode_latents, resolve_model_dir, vae_scale_factor
from ..pipelines.loaders import load_pipeline, load_vae
from ..targets import TargetNetwork
from .base import Inverter

__all__ = ["MapperInverter"]


class MapperInverter(Inverter):
    """Features -> :class:`~diffinv.models.FeatureMapper` -> VAE decode (-> optional img2img).

    Args:
        target: the network whose features are inverted (checks and feature residual).
        mapper: a trained mapper, its folder, or a folder of per-layer mapper folders.
        model: the Stable Diffusion model the mapper was trained for (see
            :func:`~diffinv.pipelines.load_vae`); defaults to the one recorded in the mapper.
        vae: the VAE instance instead of ``model``.
        unet, scheduler, text_encoder, tokenizer: for the img2img refinement
            (``strength > 0``); loaded from ``model`` with ``load_pipeline`` when not given.
        strength: img2img strength in [0, 1]; 0 (default) only decodes the mapper's latent.
        num_inference_steps: steps of the full schedule; ``strength * num_inference_steps`` run.
        prompt: text for the refinement (default: none).
        guidance_scale: classifier-free guidance for the refinement (<= 1: off).
        batch_size: images decoded per VAE call.

    Raises:
        FileNotFoundError: no trained mapper, or no diffusion model files.
        ValueError: features of another layer, target or input size than the mapper's.
    """

    name = "mapper"
    white_box = False

    def __init__(
        self,
        target: TargetNetwork,
        *,
        mapper: FeatureMapper | str | os.PathLike,
        model: str | os.PathLike | None = None,
        vae=None,
        unet=None,
        scheduler=None,
        text_encoder=None,
        tokenizer=None,
        strength: float = 0.0,
        num_inference_steps: int = 20,
        prompt: str = "",
        guidance_scale: float = 1.0,
        batch_size: int = 16,
    ):
        super().__init__(target)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be in [0, 1], got {strength}.")
        self.model, self.vae = model, vae
        self.unet, self.scheduler, self.text_encoder, self.tokenizer = unet, scheduler, text_encoder, tokenizer
        self.strength, self.num_inference_steps = strength, num_inference_steps
        self.prompt, self.guidance_scale, self.batch_size = prompt, guidance_scale, batch_size
        self._mappers: dict[str | None, FeatureMapper] = {}
        if isinstance(mapper, FeatureMapper):
            self._mappers[mapper.config.layer] = mapper.to(target.mean.device).eval().requires_grad_(False)
            self.path = None
        else:
            self.path = Path(mapper)
            if not self.path.is_dir():
                raise FileNotFoundError(
                    f"`mapper` folder {str(self.path)!r} does not exist. Train one with `diffinv train-mapper`."
                )

    @classmethod
    def from_pipeline(cls, target: TargetNetwork, pipe, *, mapper, **kwargs) -> "MapperInverter":
        """Uses the components of a diffusers Stable Diffusion pipeline (e.g. ``DiffInvPipeline``)."""
        return cls(target, mapper=mapper, vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler,
                   text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, **kwargs)

    # ------------------------------------------------------------------ components
    def mapper_for(self, layer: str) -> FeatureMapper:
        """The mapper trained on ``layer`` (loaded once, on the target's device)."""
        if layer in self._mappers:
            return self._mappers[layer]
        if self.path is None:
            trained = ", ".join(str(k) for k in self._mappers)
            raise ValueError(f"`features` come from layer {layer!r} but the mapper was trained on {trained}.")
        mapper = FeatureMapper.from_pretrained(str(resolve_model_dir(self.path, layer, "mapper")))
        if mapper.config.layer != layer:
            raise ValueError(f"`features` come from layer {layer!r} but the mapper in {str(self.path)!r} was "
                             f"trained on {mapper.config.layer!r}.")
        self._mappers[layer] = mapper.to(self.target.mean.device).eval().requires_grad_(False)
        return self._mappers[layer]

    def _model_name(self, mapper: FeatureMapper):
        model = self.model or mapper.config.model
        if model is None:
            raise ValueError("`model` is required: the Stable Diffusion model whose VAE the mapper was trained for.")
        return model

    def _load_vae(self, mapper: FeatureMapper):
        if self.vae is None:
            self.vae = load_vae(self._model_name(mapper))
        self.vae = self.vae.to(self.target.mean.device)
        if vae_latent_shape(self.vae, mapper) != tuple(mapper.config.latent_shape):
            raise ValueError(
                f"the VAE's latents for {tuple(mapper.config.input_size)} images are {vae_latent_shape(self.vae, mapper)}"
                f" but the mapper predicts {tuple(mapper.config.latent_shape)}: it was trained for another model."
            )
        return self.vae

    def _load_refiner(self, mapper: FeatureMapper) -> None:
        if self.unet is not None and self.scheduler is not None:
            return
        pipe = load_pipeline(self._model_name(mapper), device=self.target.mean.device)
        self.unet, self.scheduler = pipe.unet, pipe.scheduler
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        if self.vae is None:
            self.vae = pipe.vae

    # ------------------------------------------------------------------ img2img
    @torch.no_grad()
    def _prompt_embeds(self, n: int, device) -> torch.Tensor:
        """``(n, L, D)`` prompt embeddings; with guidance ``(2n, L, D)``, unconditional first."""

        def embed(text: str) -> torch.Tensor:
            if self.tokenizer is None or self.text_encoder is None:
                dim = self.unet.config.cross_attention_dim
                return torch.zeros(n, 77, dim, device=device, dtype=self.unet.dtype)
            ids = self.tokenizer([text] * n, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            return self.text_encoder(ids.to(device))[0].to(self.unet.dtype)

        cond = embed(self.prompt)
        return torch.cat([embed(""), cond]) if self.guidance_scale > 1.0 else cond

    @torch.no_grad()
    def refine(self, latents: torch.Tensor, *, generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
        """img2img: noise ``latents`` to ``strength`` and denoise them with the UNet."""
        from diffusers.utils.torch_utils import randn_tensor

        device = latents.device
        scheduler = self.scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        run = min(int(self.num_inference_steps * self.strength), self.num_inference_steps)
        begin = (self.num_inference_steps - run) * scheduler.order
        timesteps = scheduler.timesteps[begin:]
        if run == 0 or len(timesteps) == 0:
            return latents
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(latents)))
        embeds = self._prompt_embeds(len(latents), device)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        cfg = self.guidance_scale > 1.0
        for t in tqdm(timesteps, desc="img2img", disable=not progress, leave=False):
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            eps = self.unet(model_input.to(self.unet.dtype), t, encoder_hidden_states=embeds).sample.float()
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + self.guidance_scale * (cond - uncond)
            latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    # ------------------------------------------------------------------ inversion
    def _prepare(self, features, layer, size):
        mapper = self.mapper_for(layer)
        check_model_input(mapper, features, size)
        if self.strength > 0:
            self._load_refiner(mapper)
        self._load_vae(mapper)

    @torch.no_grad()
    def _reconstruct(self, features, layer, size, *, generator, progress):
        latents = self.mapper_for(layer).initial_latents(features)
        if self.strength > 0:
            latents = self.refine(latents, generator=generator, progress=progress)
        images = torch.cat([decode_latents(self.vae, z).clamp(0, 1) for z in latents.split(self.batch_size)])
        return images, torch.zeros(0, len(images)), {"strength": self.strength, "latents": latents.cpu()}


def vae_latent_shape(vae, mapper: FeatureMapper) -> tuple[int, int, int]:
    f = vae_scale_factor(vae)
    h, w = mapper.config.input_size
    return (vae.config.latent_channels, h // f, w // f)
