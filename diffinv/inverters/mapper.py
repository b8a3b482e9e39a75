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
    >>> out = MapperInverter(target, mapper="mappers/blocks.2", pipe=pipe, vae=pipe.vae, strength=0.3)(feature_set)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .. import models, pipelines  # FeatureMapper and the pipelines import diffusers when first used
from ..models.learned import PerLayerModels, check_model_input, resolve_model_dir
from ..resources import learned_model_cost
from ..targets import TargetNetwork
from .base import Inverter
from .config import InverterConfig, OptionInfo, option
from .sd_model import MODEL_HELP, check_model_option, model_cost

__all__ = ["MapperConfig", "MapperInverter"]

_PIPELINE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


@dataclass(frozen=True)
class MapperConfig(InverterConfig):
    """The mapper inverter's settings.

    Attributes:
        model: the Stable Diffusion model the mapper was trained for (see
            :func:`~diffinv.pipelines.load_vae`); default the one recorded in the mapper.
        strength: img2img strength in [0, 1]; 0 (default) only decodes the mapper's latent;
            otherwise :meth:`DiffInvPipeline.img2img <diffinv.pipelines.DiffInvPipeline.img2img>`
            runs :func:`~diffinv.pipelines.img2img_steps` ``(num_inference_steps, strength)`` steps.
        num_inference_steps: K, the steps of the full chain.
        prompt: text for the refinement (default: none).
        guidance_scale: classifier-free guidance for the refinement (<= 1: off).
        batch_size: images decoded per VAE call.
        path: the folder the mapper(s) come from (filled in by the inverter; ``None`` for a mapper
            instance).
        vae: always ``None`` (the VAE instance is not a setting); kept so that the settings, and so
            the run folders, made before this config stay the same.
    """

    method = "mapper"
    folders = ("model", "path")
    derived = ("path", "vae")

    model: str | None = option(None, "optional_str", help=MODEL_HELP)
    strength: float = option(
        0.0, "unit", help="img2img strength of the refinement of its latent in [0, 1] (0: decode it only)"
    )
    num_inference_steps: int = option(
        20, "positive_int", flag="--steps", help="sampler steps K of the diffusion chain"
    )
    prompt: str = option("", "str", help="text prompt of the refinement")
    guidance_scale: float = option(1.0, "non_negative")
    batch_size: int = option(16, "positive_int")
    path: str | None = option(None, "optional_str")
    vae: None = option(None, "optional_str")


class MapperInverter(Inverter):
    """Features -> :class:`~diffinv.models.FeatureMapper` -> VAE decode (-> optional img2img).

    Args:
        target: the network whose features are inverted (checks and feature residual).
        mapper: a trained mapper, its folder, or a folder of per-layer mapper folders.
        vae: the VAE instance instead of the config's ``model``.
        pipe: the diffusion pipeline for the img2img refinement (``strength > 0``): a
            :class:`~diffinv.pipelines.DiffInvPipeline`, or any diffusers Stable Diffusion pipeline
            (a DiffInvPipeline is built from its components); loaded from ``model`` with
            :func:`~diffinv.pipelines.load_pipeline` when not given.
        config: a :class:`MapperConfig` (default: its defaults).
        **options: fields of :class:`MapperConfig` (``model``, ``strength``, ``num_inference_steps``, ...).

    Raises:
        FileNotFoundError: no trained mapper, or no diffusion model files.
        ValueError: features of another layer, target or input size than the mapper's; an option
            :class:`MapperConfig` does not have, or a value it refuses (``strength`` not in [0, 1], ...).
    """

    name = "mapper"
    white_box = False
    config_class = MapperConfig
    extra_options = ("mapper", "vae", "pipe")
    extra_flags = {"mapper": OptionInfo(help="a `diffinv train-mapper` folder (or per-layer folders)")}
    required = {"mapper": "a trained mapper or its folder (from `diffinv train-mapper`)"}
    roles = frozenset({"start"})
    trained_model = "mapper"

    @classmethod
    def check_options(cls, options):
        """A ``mapper`` folder holds a trained mapper (or one per layer); a ``model`` folder what it needs."""
        if isinstance(options.get("mapper"), (str, os.PathLike)):
            resolve_model_dir(options["mapper"], kind="mapper")
        check_model_option(cls.name, options)

    @classmethod
    def memory_cost(cls, options, shape):
        """The Stable Diffusion networks (the VAE decode, the refinement's chain) and the mapper."""
        return {**model_cost(options, shape), "mapper": learned_model_cost(shape)}

    def __init__(
        self,
        target: TargetNetwork,
        *,
        mapper: models.FeatureMapper | str | os.PathLike,
        vae=None,
        pipe=None,
        config: MapperConfig | None = None,
        **options,
    ):
        super().__init__(target, config, **options)
        c = self.config
        if c.strength > 0:
            pipelines.img2img_steps(c.num_inference_steps, c.strength)  # checks the steps now, not after loading
        self.vae = vae
        self._pipe = self._as_diffinv_pipeline(pipe) if pipe is not None else None
        self._mappers = PerLayerModels(mapper, models.FeatureMapper, "mapper", target.mean.device)
        self.config = replace(c, path=None if self._mappers.path is None else os.fspath(self._mappers.path))

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
        model = self.config.model or mapper.config.model
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
    def refine(
        self, latents: torch.Tensor, *, generator: torch.Generator | None = None, progress: bool = True
    ) -> torch.Tensor:
        """img2img: ``latents`` noised to ``strength`` and denoised by the pipeline's chain (strength 0: as is).

        The pipeline's :meth:`~diffinv.pipelines.DiffInvPipeline.img2img`, with the config's
        ``strength``, ``num_inference_steps``, ``prompt`` and ``guidance_scale``; the result is on
        ``latents``' device.

        Raises:
            ValueError: ``strength > 0`` and no pipeline was given or loaded yet (see ``pipe``).
        """
        c = self.config
        if c.strength == 0:
            return latents
        if self._pipe is None:
            raise ValueError("`refine` needs the diffusion pipeline: pass `pipe=`, or `model=` and invert once.")
        refined = self._pipe.img2img(
            latents, c.strength, num_inference_steps=c.num_inference_steps, prompt=c.prompt,
            guidance_scale=c.guidance_scale, generator=generator,
            progress_bar_config={"disable": not progress, "leave": False, "desc": "img2img"},
        )  # fmt: skip
        return refined.to(latents.device)

    # ------------------------------------------------------------------ inversion
    def _prepare(self, features, layer, size):
        mapper = self.mapper_for(layer)
        check_model_input(mapper, features, size)
        if self.config.strength > 0:
            self._load_pipeline(mapper)
        self._load_vae(mapper)

    @property
    def latent_start(self) -> bool:
        """With ``strength`` 0 the estimate is the mapper's latent itself: a hybrid starts from it."""
        return self.config.strength == 0

    def start_mapper(self, layer: str) -> models.FeatureMapper | None:
        """The mapper of ``layer`` when its latents are this method's estimate (``strength`` 0): the
        diffusion chain of a hybrid then starts from them directly (``pipe(init="mapper")``)."""
        return self.mapper_for(layer) if self.config.strength == 0 else None

    @torch.no_grad()
    def _reconstruct(self, features, layer, size, *, generator, progress):
        c = self.config
        latents = self.mapper_for(layer).initial_latents(features)
        if c.strength > 0:
            latents = self.refine(latents, generator=generator, progress=progress)
        images = torch.cat([models.decode_latents(self.vae, z).clamp(0, 1) for z in latents.split(c.batch_size)])
        steps = pipelines.img2img_steps(c.num_inference_steps, c.strength) if c.strength > 0 else 0
        info = {"strength": c.strength, "img2img_steps": steps, "latents": latents.cpu()}
        return images, torch.zeros(0, len(images)), info


def vae_latent_shape(vae, mapper: models.FeatureMapper) -> tuple[int, int, int]:
    f = models.vae_scale_factor(vae)
    h, w = mapper.config.input_size
    return (vae.config.latent_channels, h // f, w // f)
