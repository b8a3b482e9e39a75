"""Black-box inversion with a trained FeatureMapper: features -> latent -> VAE decode.

Optionally the decoded guess is refined by img2img (SDEdit) with the diffusion model:
:meth:`DiffInvPipeline.img2img <diffinv.pipelines.DiffInvPipeline.img2img>` noises the
mapper's latent to strength ``s`` and denoises it through the last
``img2img_steps(num_inference_steps, s)`` steps of the pipeline's deterministic chain — the
same definition and chain as the hybrid start ``pipe(features, init="mapper", strength=s)``.
It pulls the guess toward natural images while keeping its layout. No gradient of the target
is used anywhere.

Example:
    >>> inverter = MapperInverter(target, mapper="mappers/blocks.2", model="path/to/sd15")
    >>> out = inverter(feature_set)                       # mapper + VAE decode
    >>> pipe = load_pipeline("path/to/sd15")
    >>> out = MapperInverter.from_pipeline(target, pipe, mapper="mappers/blocks.2", strength=0.3)(feature_set)
"""

from __future__ import annotations

import os

import torch

from .. import models, pipelines  # FeatureMapper and the pipelines import diffusers when first used
from ..models.learned import PerLayerModels, check_model_input
from ..targets import TargetNetwork
from .base import Inverter

__all__ = ["MapperInverter"]

_PIPELINE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


class MapperInverter(Inverter):
    """Features -> :class:`~diffinv.models.FeatureMapper` -> VAE decode (-> optional img2img).

    Args:
        target: the network whose features are inverted (checks and feature residual).
        mapper: a trained mapper, its folder, or a folder of per-layer mapper folders.
        model: the Stable Diffusion model the mapper was trained for (see
            :func:`~diffinv.pipelines.load_vae`); defaults to the one recorded in the mapper.
        vae: the VAE instance instead of ``model``.
        pipe: the diffusion pipeline for the img2img refinement (``strength > 0``): a
            :class:`~diffinv.pipelines.DiffInvPipeline`, or any diffusers Stable Diffusion pipeline
            (a DiffInvPipeline is built from its components); loaded from ``model`` with
            :func:`~diffinv.pipelines.load_pipeline` when not given.
        strength: img2img strength in [0, 1]; 0 (default) only decodes the mapper's latent;
            otherwise :meth:`DiffInvPipeline.img2img <diffinv.pipelines.DiffInvPipeline.img2img>`
            runs :func:`~diffinv.pipelines.img2img_steps` ``(num_inference_steps, strength)`` steps.
        num_inference_steps: K, the steps of the full chain.
        prompt: text for the refinement (default: none).
        guidance_scale: classifier-free guidance for the refinement (<= 1: off).
        batch_size: images decoded per VAE call.

    Raises:
        FileNotFoundError: no trained mapper, or no diffusion model files.
        ValueError: features of another layer, target or input size than the mapper's; ``strength``
            not in [0, 1].
    """

    name = "mapper"
    white_box = False

    def __init__(
        self,
        target: TargetNetwork,
        *,
        mapper: models.FeatureMapper | str | os.PathLike,
        model: str | os.PathLike | None = None,
        vae=None,
        pipe=None,
        strength: float = 0.0,
        num_inference_steps: int = 20,
        prompt: str = "",
        guidance_scale: float = 1.0,
        batch_size: int = 16,
    ):
        super().__init__(target)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be in [0, 1] (0: no img2img refinement), got {strength!r}.")
        if strength > 0:
            pipelines.img2img_steps(num_inference_steps, strength)  # checks `num_inference_steps` now, not after loading
        self.model, self.vae = model, vae
        self._pipe = self._as_diffinv_pipeline(pipe) if pipe is not None else None  # not a setting (see settings())
        self.strength, self.num_inference_steps = strength, num_inference_steps
        self.prompt, self.guidance_scale, self.batch_size = prompt, guidance_scale, batch_size
        self._mappers = PerLayerModels(mapper, models.FeatureMapper, "mapper", target.mean.device)
        self.path = self._mappers.path

    @classmethod
    def from_pipeline(cls, target: TargetNetwork, pipe, *, mapper, **kwargs) -> "MapperInverter":
        """Uses a diffusers Stable Diffusion pipeline (e.g. ``DiffInvPipeline``): its VAE and, for
        ``strength > 0``, its img2img."""
        return cls(target, mapper=mapper, vae=pipe.vae, pipe=pipe, **kwargs)

    @property
    def pipe(self) -> pipelines.DiffInvPipeline | None:
        """The pipeline whose :meth:`~diffinv.pipelines.DiffInvPipeline.img2img` refines; ``None`` until needed."""
        return self._pipe

    @staticmethod
    def _as_diffinv_pipeline(pipe) -> pipelines.DiffInvPipeline:
        if isinstance(pipe, pipelines.DiffInvPipeline):
            return pipe
        missing = [name for name in _PIPELINE_COMPONENTS if getattr(pipe, name, None) is None]
        if missing:
            raise ValueError(
                f"`pipe` must be a DiffInvPipeline or a Stable Diffusion pipeline with "
                f"{', '.join(_PIPELINE_COMPONENTS)}; {type(pipe).__name__} has no {', '.join(missing)}."
            )
        return pipelines.DiffInvPipeline(**{name: getattr(pipe, name) for name in _PIPELINE_COMPONENTS})

    # ------------------------------------------------------------------ components
    def mapper_for(self, layer: str) -> models.FeatureMapper:
        """The mapper trained on ``layer`` (loaded once, on the target's device)."""
        return self._mappers(layer)

    def _model_name(self, mapper: models.FeatureMapper):
        model = self.model or mapper.config.model
        if model is None:
            raise ValueError("`model` is required: the Stable Diffusion model whose VAE the mapper was trained for.")
        return model

    def _load_vae(self, mapper: models.FeatureMapper):
        if self.vae is None:
            self.vae = pipelines.load_vae(self._model_name(mapper))
        self.vae = self.vae.to(self.target.mean.device)
        if vae_latent_shape(self.vae, mapper) != tuple(mapper.config.latent_shape):
            raise ValueError(
                f"the VAE's latents for {tuple(mapper.config.input_size)} images are {vae_latent_shape(self.vae, mapper)}"
                f" but the mapper predicts {tuple(mapper.config.latent_shape)}: it was trained for another model."
            )
        return self.vae

    def _load_pipeline(self, mapper: models.FeatureMapper) -> pipelines.DiffInvPipeline:
        if self._pipe is None:
            self._pipe = pipelines.load_pipeline(self._model_name(mapper), device=self.target.mean.device)
            if self.vae is None:
                self.vae = self._pipe.vae
        return self._pipe

    # ------------------------------------------------------------------ img2img
    @torch.no_grad()
    def refine(self, latents: torch.Tensor, *, generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
        """img2img: ``latents`` noised to ``strength`` and denoised by the pipeline's chain (strength 0: as is).

        The pipeline's :meth:`~diffinv.pipelines.DiffInvPipeline.img2img`, with this inverter's
        ``strength``, ``num_inference_steps``, ``prompt`` and ``guidance_scale``; the result is on
        ``latents``' device.

        Raises:
            ValueError: ``strength > 0`` and no pipeline was given or loaded yet (see ``pipe``).
        """
        if self.strength == 0:
            return latents
        if self._pipe is None:
            raise ValueError("`refine` needs the diffusion pipeline: pass `pipe=` (or `model=`) and invert once, "
                             "or use `MapperInverter.from_pipeline`.")
        self._pipe.set_progress_bar_config(disable=not progress, leave=False, desc="img2img")
        refined = self._pipe.img2img(
            latents, self.strength, num_inference_steps=self.num_inference_steps, prompt=self.prompt,
            guidance_scale=self.guidance_scale, generator=generator,
        )  # fmt: skip
        return refined.to(latents.device)

    # ------------------------------------------------------------------ inversion
    def _prepare(self, features, layer, size):
        mapper = self.mapper_for(layer)
        check_model_input(mapper, features, size)
        if self.strength > 0:
            self._load_pipeline(mapper)
        self._load_vae(mapper)

    @torch.no_grad()
    def _reconstruct(self, features, layer, size, *, generator, progress):
        latents = self.mapper_for(layer).initial_latents(features)
        if self.strength > 0:
            latents = self.refine(latents, generator=generator, progress=progress)
        images = torch.cat([models.decode_latents(self.vae, z).clamp(0, 1) for z in latents.split(self.batch_size)])
        steps = pipelines.img2img_steps(self.num_inference_steps, self.strength) if self.strength > 0 else 0
        info = {"strength": self.strength, "img2img_steps": steps, "latents": latents.cpu()}
        return images, torch.zeros(0, len(images)), info


def vae_latent_shape(vae, mapper: models.FeatureMapper) -> tuple[int, int, int]:
    f = models.vae_scale_factor(vae)
    h, w = mapper.config.input_size
    return (vae.config.latent_channels, h // f, w // f)
