"""DiffInvPipeline: white-box feature inversion through a Stable Diffusion prior.

Given the features ``f`` of an image at one layer of a target network ``N``, the pipeline
optimizes the initial latent ``z_T`` of a K-step deterministic sampler so that
``N(decode(sample(z_T)))`` matches ``f``::

    z_T (fp32, optimized) -> K DDIM steps (UNet, checkpointed, optional CFG)
        -> VAE decode (checkpointed) -> image in [0, 1] -> N -> feature loss + priors

Only latents are optimized (all weights are frozen). With ``gradient_checkpointing=True``
(the default) every UNet call and the VAE decode are recomputed during the backward pass,
so memory stays nearly flat as K grows. The networks may run in fp16/bf16
(``torch_dtype``); the optimized latents and the loss stay fp32; a non-finite loss or
gradient is detected and the step is retried (fp16: with a smaller loss scale) or
skipped, and counted in the output; in fp16, an image whose VAE decode is not finite is decoded
again in fp32 for that step, and counted (``fp32_decodes``). A lighter decoder (TAESD,
:meth:`DiffInvPipeline.set_loop_vae`) may stand in for the VAE inside the loop; the full VAE decodes
the returned images. The loop is the one optimization rule of every diffinv
inverter, :func:`diffinv.optimization.run_optimization` (cosine learning rate, best iterate per
image); :meth:`DiffInvPipeline.img2img` and the hybrid start share one img2img chain
(:func:`img2img_steps`).

This file also works as a diffusers ``custom_pipeline`` (it imports ``diffinv`` only by
absolute imports)::

    pipe = DiffusionPipeline.from_pretrained(sd_dir, custom_pipeline="pipelines/diffinv_pipeline.py", trust_remote_code=True,
                                             target="tf_efficientnet_lite0", layer="blocks.2")

Example:
    >>> pipe = DiffInvPipeline.from_pretrained("path/to/stable-diffusion-v1-5", target="resnet50", layer="layer3")
    >>> out = pipe(feature_set, num_inference_steps=10, iterations=100)
    >>> out.images[0].save("reconstruction.png"); out.feature_residual
    >>> pipe = load_pipeline("tiny", target=target)        # random weights, offline, for tests
    >>> refined = pipe.img2img(latents, strength=0.3, num_inference_steps=20)   # img2img on clean latents
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffinv.compilation import backend, compiled, feature_function, mark_step
from diffinv.features import FeatureSet, check_images, check_input_size, resolve_features
from diffinv.inverters.diffusion import CALL_DEFAULTS as DEFAULTS
from diffinv.losses import feature_loss, latent_prior, temporal_smoothness
from diffinv.metrics import feature_residual
from diffinv.models.vae import decode_latents, encode_latents
from diffinv.optimization import EarlyStopping, check_weight, run_optimization
from diffinv.pipelines.definitions import (
    DEFINITIONS,
    HOW_TO_PROVIDE,
    ModelFilesNotFoundError,
    check_model_dir,
    definition_dir,
    is_local_path,
    load_tokenizer,
    read_json,
)
from diffinv.pipelines.loss_scaling import LossScaler
from diffinv.prompts import class_prompt, resolve_prompts
from diffinv.targets import TargetNetwork

__all__ = ["DiffInvPipeline", "DiffInvPipelineOutput", "img2img_steps", "nearest_multiple_of_8"]

logger = logging.get_logger(__name__)

# A tokenizer backed by the Rust `tokenizers` library refuses concurrent calls ("Already borrowed"):
# calls of a pipeline shared between threads take turns to tokenize (a few microseconds).
_TOKENIZER_LOCK = threading.Lock()


def nearest_multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` rounded per side to the nearest multiple of 8 (at least 8): the size a Stable
    Diffusion model generates for a requested image size that it cannot make itself.

    The one rounding of diffinv: the pipeline's default output size for a FeatureSet made at another
    size, and the generated size of :class:`~diffinv.inverters.diffusion.DiffusionInverter`.

    Example:
        >>> nearest_multiple_of_8((30, 100)), nearest_multiple_of_8((3, 64))
        ((32, 96), (8, 64))
    """
    return tuple(max(8, 8 * round(v / 8)) for v in size)


def _dtype_of(target: TargetNetwork) -> torch.dtype:
    """The target keeps its own dtype (fp32 unless cast): images are cast to it."""
    return next(target.parameters(), torch.empty(0)).dtype


@dataclass(frozen=True)
class _CallFeatures:
    """The features of one call, resolved once (:meth:`DiffInvPipeline.resolve_call_features`).

    Attributes:
        features: ``(N, ...)`` the checked feature tensor, fp32, on the target's device.
        target: the network they come from.
        layer: their layer.
        input_size: the ``(H, W)`` the target resizes to in this call (``None``: its own).
        image_size: ``(H, W)`` of the images the pipeline generates, multiples of 8.
    """

    features: torch.Tensor
    target: TargetNetwork
    layer: str
    input_size: tuple[int, int] | None
    image_size: tuple[int, int]


@dataclass(frozen=True)
class _Start:
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
_STARTS = {
    "mapper": _Start(
        lambda m: hasattr(m, "initial_latents"),
        "a trained FeatureMapper",
        lambda pipe, mapper, features, size: mapper.to(pipe._execution_device).initial_latents(features),
    ),
    "image": _Start(
        lambda image: image is not None,
        "the start image(s), (N, 3, H, W) in [0, 1] or PIL",
        lambda pipe, image, features, size: pipe.encode_image(image, size),
        exclusive=True,
    ),
}


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


@dataclass
class DiffInvPipelineOutput(BaseOutput):
    """Output of :class:`DiffInvPipeline`.

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


class DiffInvPipeline(DiffusionPipeline):
    r"""Inverts the features of a target network by optimizing Stable Diffusion latents.

    Args:
        vae: decodes latents to images.
        text_encoder: CLIP text encoder for the prompt embeddings.
        tokenizer: its tokenizer.
        unet: the denoiser.
        scheduler: the model's scheduler. Its configuration (betas, prediction type) defines the
            differentiable sampler, which is always deterministic DDIM (see :meth:`chain_scheduler`).
        target: the network whose features are inverted: a :class:`~diffinv.targets.TargetNetwork`,
            a name for :meth:`TargetNetwork.from_name` (``"resnet50"``, ``"tf_efficientnet_lite0"``,
            any timm name), or ``None`` (then a FeatureSet's own target is built at call time).
        layer: the default feature layer (a FeatureSet carries its own).
        target_weights: weights for a target given by name: ``"default"`` (pretrained, local
            cache), ``"random:SEED"``, ``None`` (random) or a state-dict file.
        target_follows_features: whether the target takes the input size the features were made at (below);
            default: yes for a target given by name, no for a TargetNetwork. Saved with the pipeline.

    A target the pipeline builds itself (given by name) takes, at each call, the input size the
    features were made at: a FeatureSet's recorded resize (``preprocessing["input_size"]``, else its
    ``input_size``), or for a tensor the call's ``input_size`` (else ``height``/``width``). A
    :class:`~diffinv.targets.TargetNetwork` passed in keeps its own ``input_size``.

    The target is a diffusers component (``TargetNetwork`` is a ``ModelMixin``): ``save_pretrained`` writes it to
    ``target/`` (its config, the description that rebuilds it, and its weights) and ``model_index.json`` names it
    ``["diffinv.targets", "TargetNetwork"]``, so ``from_pretrained`` (and diffusers' ``custom_pipeline``) load it
    with the other components.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["target"]
    _callback_tensor_inputs = ["latents", "loss", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        target: TargetNetwork | str | None = None,
        layer: str | None = None,
        target_weights: str | None = "default",
        target_follows_features: bool | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        for module in (vae, text_encoder, unet):
            module.eval().requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.loop_vae: AutoencoderTiny | None = None  # a lighter decoder for the loop (set_loop_vae)
        self.layer: str | None = None
        self.register_modules(target=None)
        if target is not None:
            self.set_target(target, layer=layer, weights=target_weights, follows_features=target_follows_features)
        else:
            self.register_to_config(layer=layer, target_follows_features=False)

    # ------------------------------------------------------------------ target
    def set_target(
        self,
        target: TargetNetwork | str,
        layer: str | None = None,
        weights: str | None = "default",
        follows_features: bool | None = None,
    ) -> DiffInvPipeline:
        """Sets the network whose features are inverted (the ``target`` component).

        Args:
            target: a TargetNetwork, or a name for ``TargetNetwork.from_name``.
            layer: the default feature layer; defaults to the target's single layer.
            weights: for a name: ``"default"``, ``"random:SEED"``, ``None`` (unseeded random) or a
                state-dict file.
            follows_features: whether the target takes the features' input size at each call (see the class
                docstring); default: yes for a name, no for a TargetNetwork.
        """
        if isinstance(target, str):
            target = TargetNetwork.from_name(target, layer, weights=weights)
            follows_features = True if follows_features is None else follows_features
        elif not isinstance(target, TargetNetwork):
            raise TypeError(f"`target` must be a TargetNetwork or a name, got {type(target).__name__}.")
        if layer is not None and layer not in target.layer_names():
            raise ValueError(f"`layer` {layer!r} is not a module of target {target.name!r}.")
        self.register_modules(target=target.to(self.device))
        self.layer = layer or (target.layers[0] if len(target.layers) == 1 else None)
        self.register_to_config(layer=self.layer, target_follows_features=bool(follows_features))
        return self

    def with_target(
        self, target: TargetNetwork | str, layer: str | None = None, weights: str | None = "default"
    ) -> DiffInvPipeline:
        """A new pipeline sharing this one's components (no copies) with another target, kept for a caller that
        wants a pipeline object of its own; a caller that shares one pipeline between targets (an ``lru_cache``,
        threads) passes the target to the call instead (``pipe(features, target=..., layer=...)``), which makes
        nothing and changes nothing, unlike :meth:`set_target`.

        Example:
            >>> out = shared.with_target(target, layer="blocks.2")(features)
            >>> out = shared(features, target=target, layer="blocks.2")    # the same, without a new pipeline
        """
        components = {k: v for k, v in self.components.items() if k != "target"}
        pipe = type(self)(**components, target=target, layer=layer, target_weights=weights)
        pipe.register_to_config(_name_or_path=self.name_or_path)
        pipe.loop_vae = self.loop_vae
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def to(self, *args, **kwargs) -> DiffInvPipeline:
        """Moves/casts the diffusion components (the loop's decoder follows the VAE); the target only moves (it
        keeps its dtype: diffusers' ``to`` does not see it)."""
        target = self.__dict__.get("target")
        self.__dict__["target"] = None
        try:
            super().to(*args, **kwargs)
        finally:
            self.__dict__["target"] = target
        if target is not None:
            target.to(self.device)
        if self.loop_vae is not None:
            self.loop_vae.to(self.vae.device, self.vae.dtype)
        return self

    def set_loop_vae(self, vae: AutoencoderTiny | None) -> DiffInvPipeline:
        """Decodes with ``vae`` inside the optimization loop (a lighter decoder: diffusers' ``AutoencoderTiny``,
        TAESD, :func:`~diffinv.pipelines.load_taesd`); the returned images are still decoded by the full VAE.
        ``None``: the full VAE throughout. Not saved by :meth:`save_pretrained`; kept by :meth:`with_target`.

        Raises:
            ValueError: ``vae`` does not take this pipeline's latents (channels) or upsamples by another factor.

        Example:
            >>> pipe.set_loop_vae(load_taesd("path/to/taesd"))
        """
        if vae is not None:
            config = vae.config
            scale = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
            if config.latent_channels != self.vae.config.latent_channels or scale != self.vae_scale_factor:
                raise ValueError(
                    f"`vae` decodes {config.latent_channels}-channel latents {scale}x up, but this pipeline's VAE "
                    f"decodes {self.vae.config.latent_channels}-channel latents {self.vae_scale_factor}x up: use a "
                    f"TAESD made for this model (or 'random')."
                )
            vae = vae.to(self.vae.device, self.vae.dtype).eval().requires_grad_(False)
        self.loop_vae = vae
        return self

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffInvPipeline:
        r"""Loads a diffusers-format Stable Diffusion model (a directory or a Hub id in the HF cache).

        SD 1.x/2.x and one-step turbo models load; their extra components (safety checker,
        feature extractor) are not loaded. Keyword arguments are those of
        ``DiffusionPipeline.from_pretrained`` (``torch_dtype``, ``variant``, ``local_files_only``,
        ...) plus ``target``, ``layer`` and ``target_weights`` (see the class docstring).

        Raises:
            ModelFilesNotFoundError: the directory or its weights are missing, or the Hub id is
                neither cached nor downloadable; the message says how to provide the files offline.
        """
        path = os.fspath(pretrained_model_name_or_path)
        for key in ("target", "layer"):  # None: the saved one
            if key in kwargs and kwargs[key] is None:
                del kwargs[key]
        if isinstance(kwargs.get("target"), str):  # a name: built here, so that it replaces a saved target too
            kwargs["target"] = TargetNetwork.from_name(
                kwargs["target"], kwargs.get("layer"), weights=kwargs.pop("target_weights", "default")
            )
            kwargs.setdefault("target_follows_features", True)
        if os.path.isdir(path):
            check_model_dir(path)
            return super().from_pretrained(path, **kwargs)
        if is_local_path(path):
            raise ModelFilesNotFoundError(
                f"`pretrained_model_name_or_path` {path!r} is not a directory. " + HOW_TO_PROVIDE
            )
        kwargs.setdefault("local_files_only", True)  # a Hub id loads from the local cache; never a silent download
        try:
            return super().from_pretrained(path, **kwargs)
        except OSError as err:
            hint = (
                f" ({path!r} names a weight-free definition: use `load_pipeline({path!r})`.)"
                if path in DEFINITIONS
                else ""
            )
            raise ModelFilesNotFoundError(
                f"could not load the diffusion model {path!r}: it is not a local directory and not in the "
                f"Hugging Face cache on this machine ({type(err).__name__}; diffinv loads Hub ids from the cache "
                f"only, pass `local_files_only=False` to allow a download).{hint} " + HOW_TO_PROVIDE
            ) from err

    @classmethod
    def from_definition(
        cls,
        name_or_path: str | os.PathLike,
        *,
        target: TargetNetwork | str | None = None,
        layer: str | None = None,
        target_weights: str | None = "default",
        torch_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> DiffInvPipeline:
        """Builds a pipeline with random weights from a definition (model_index.json + configs).

        Args:
            name_or_path: ``"tiny"``, ``"sd15"``, ``"sd-turbo"`` (folders of ``pipelines/``) or a
                directory with the same layout. Real-size random pipelines are for speed and memory
                measurements only.
            seed: seeds the random weights of each component (the global RNG state is left as it
                was), so the VAE equals ``AutoencoderKL.from_config`` right after ``torch.manual_seed(seed)``.

        The tokenizer comes from ``tokenizer/vocab.json`` and ``merges.txt`` when present;
        otherwise the real CLIP vocabulary is built from the BPE file shipped by
        ``open_clip_torch`` (``pip install open_clip_torch``).
        """
        folder = definition_dir(name_or_path)
        index = read_json(folder / "model_index.json")
        with torch.random.fork_rng(devices=[]):  # each component seeded alone, as diffusers' dummy components
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            torch.manual_seed(seed)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            torch.manual_seed(seed)
            text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json"))
        scheduler_cls = getattr(diffusers, index["scheduler"][1])
        scheduler = scheduler_cls.from_config(scheduler_cls.load_config(folder / "scheduler"))
        pipe = cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=load_tokenizer(folder / "tokenizer"),
            unet=unet,
            scheduler=scheduler,
            target=target,
            layer=layer,
            target_weights=target_weights,
        )
        pipe.register_to_config(_name_or_path=str(folder))
        if torch_dtype is not None:
            pipe.to(dtype=torch_dtype)
        return pipe

    # ------------------------------------------------------------------ building blocks
    def _call_progress_bar(self, total: int, config: dict | None):
        """diffusers' progress bar, with this call's ``progress_bar_config`` over the pipeline's (not stored)."""
        if config is None:
            return self.progress_bar(total=total)
        from tqdm.auto import tqdm

        return tqdm(total=total, **{**getattr(self, "_progress_bar_config", {}), **config})

    def chain_scheduler(self, num_inference_steps: int, device: torch.device | str | None = None) -> DDIMScheduler:
        """The differentiable sampler: deterministic DDIM over ``num_inference_steps`` steps.

        Built from the model's scheduler configuration (betas, prediction type), whatever its
        class (PNDM, Euler for turbo models, ...), with ``"trailing"`` timestep spacing so that
        step one always starts from pure noise (t = T - 1), K = 1 included; the last step lands
        on the predicted clean latent (``set_alpha_to_one``), so K = 1 equals a one-step Euler
        sample of a turbo model; no sample clipping. ``DDIMScheduler.step`` keeps no state
        between calls, so the same chain is re-run every optimization iteration and
        backpropagated through.
        """
        scheduler = DDIMScheduler.from_config(
            self.scheduler.config,
            timestep_spacing="trailing",
            set_alpha_to_one=True,
            clip_sample=False,
            thresholding=False,
        )
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler

    def encode_prompt(
        self,
        prompt: list[str],
        device: torch.device,
        do_classifier_free_guidance: bool,
        negative_prompt: list[str] | None = None,
    ) -> torch.Tensor:
        """CLIP embeddings ``(N, L, D)``; with guidance ``(2N, L, D)``, negative/unconditional first."""

        def embed(texts: list[str]) -> torch.Tensor:
            with _TOKENIZER_LOCK:
                tokens = self.tokenizer(
                    texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                    return_tensors="pt",
                )  # fmt: skip
            mask = None
            if getattr(self.text_encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(device)
            return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

        embeds = embed(prompt)
        if do_classifier_free_guidance:
            embeds = torch.cat([embed(negative_prompt or [""] * len(prompt)), embeds])
        return embeds.to(self.unet.dtype)

    def _noise_prediction(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        compile: bool | str = False,
    ) -> torch.Tensor:
        """One UNet call (two halves with classifier-free guidance): fp32 in, fp32 out; ``compile``: through
        ``torch.compile`` with that backend (:mod:`diffinv.compilation`)."""
        do_cfg = guidance_scale > 1.0
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        unet = compiled(self.unet, compile=compile) if compile else self.unet
        noise = unet(model_input.to(self.unet.dtype), t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        noise = noise.float()
        if do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        return noise

    def _decode_latents(
        self,
        latents: torch.Tensor,
        compile: bool | str = False,
        vae: AutoencoderKL | AutoencoderTiny | None = None,
        redone: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """VAE decode: scaled latents -> images in [0, 1], fp32 (the one decode path, :func:`decode_latents`).

        ``vae``: the decoder (default the pipeline's VAE). An fp16 decoder's images that are not finite are
        decoded again in fp32 (:meth:`_fp32_redo`) and marked in ``redone``, a boolean ``(N,)`` mask.
        """
        vae = self.vae if vae is None else vae
        if compile:
            decode = compiled(vae, functools.partial(decode_latents, vae), "decode", compile)
        else:
            decode = functools.partial(decode_latents, vae)
        images = decode(latents)
        if vae.dtype == torch.float16:
            images = self._fp32_redo(vae, latents, images, decode, redone)
        return images.clamp(0, 1)

    @staticmethod
    def _fp32_redo(
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
        (a new CUDA-graph step for ``"reduce-overhead"``/``"max-autotune"``); ``vae`` and ``redone``: see
        :meth:`_decode_latents`.
        """
        if compile:
            mark_step(compile)

        def call(fn, *args):
            if gradient_checkpointing and torch.is_grad_enabled():
                return checkpoint(fn, *args, use_reentrant=False)
            return fn(*args)

        # The scheduler's step indexes its (CPU) noise schedule with the timestep: given the device tensor,
        # that is a host-device synchronisation per step, which stalls the GPU between UNet calls; the
        # Python int gives the same step without it (sd15 512², K = 20, H200: 4.0 -> 3.4 s per iteration in
        # bf16, 4.1 -> 3.6 s in fp32).
        step_timesteps = scheduler.timesteps.tolist()
        for i, t in enumerate(scheduler.timesteps):
            noise = call(self._noise_prediction, latents, t, prompt_embeds, guidance_scale, compile)
            latents = scheduler.step(noise, step_timesteps[i], latents, eta=0.0, return_dict=False)[0]
            if i < len(offsets):
                latents = latents + offsets[i]
            if progress_bar is not None:
                progress_bar.update()
        if not decode:
            return latents, None
        return latents, call(functools.partial(self._decode_latents, vae=vae, redone=redone), latents, compile)

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

    @staticmethod
    def _start_images(image, batch_size: int) -> torch.Tensor:
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

    @staticmethod
    def _noised_start(
        clean: torch.Tensor, scheduler: DDIMScheduler, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """Clean latents noised (fp32) to the first timestep of ``scheduler``'s chain, as img2img starts."""
        noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=torch.float32)
        return scheduler.add_noise(clean.float(), noise, scheduler.timesteps[:1])

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
        latents = self._noised_start(latents.to(device, torch.float32), scheduler, generator)
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

    # ------------------------------------------------------------------ the gradient step
    @torch.enable_grad()
    def _gradient_step(
        self,
        variables: list[torch.Tensor],
        *,
        features: torch.Tensor,
        target: TargetNetwork,
        layer: str,
        input_size: tuple[int, int] | None,
        prompt_embeds: torch.Tensor,
        scheduler: DDIMScheduler,
        guidance_scale: float,
        loss: str,
        latent_prior_weight: float,
        temporal_weight: float,
        gradient_checkpointing: bool,
        compile: bool | str,
        loss_scale: float,
        redone: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Per-image loss at ``variables`` and the gradients of the loss times ``loss_scale`` (``None`` when
        the loss is not finite); :meth:`LossScaler.unscale` divides them back. The images are decoded by the
        loop's decoder (:meth:`set_loop_vae`); ``redone`` marks those decoded again in fp32."""
        variables = [v.detach().requires_grad_() for v in variables]
        _, images = self._sample(
            variables[0],
            prompt_embeds,
            scheduler,
            guidance_scale,
            variables[1:],
            gradient_checkpointing,
            compile=compile,
            vae=self.loop_vae,
            redone=redone,
        )
        feature = feature_function(target, layer, compile)
        predicted = feature(images.to(_dtype_of(target)), input_size=input_size)
        per_image = feature_loss(predicted, features, loss)
        if latent_prior_weight:
            per_image = per_image + latent_prior_weight * latent_prior(variables[0])
        total = per_image.sum()
        if temporal_weight:
            total = total + temporal_weight * temporal_smoothness(variables[0])
        if not torch.isfinite(total):
            return per_image.detach(), None
        return per_image.detach(), list(torch.autograd.grad(total * loss_scale, variables))

    # ------------------------------------------------------------------ the call
    def check_inputs(
        self,
        features: torch.Tensor | FeatureSet,
        guidance_scale: float,
        num_inference_steps: int,
        iterations: int,
        learning_rate: float,
        input_size: tuple[int, int] | None,
        latent_prior_weight: float,
        temporal_weight: float,
        optimize: str,
        latents: torch.Tensor | None,
        init: str,
        mapper,
        image,
        strength: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        max_retries: int,
        num_images_per_prompt: int,
        early_stop: EarlyStopping | None = None,
        target: TargetNetwork | None = None,
    ) -> None:
        """Raises a ValueError naming the argument, its value and what was expected, for any argument
        of :meth:`__call__` that can be checked before the features are (:meth:`resolve_call_features`)."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if optimize not in ("initial", "all"):
            raise ValueError(f"`optimize` must be 'initial' or 'all', got {optimize!r}.")
        if init != "noise" and init not in _STARTS:
            *others, last = ("noise", *_STARTS)
            raise ValueError(f"`init` must be {', '.join(map(repr, others))} or {last!r}, got {init!r}.")
        for name, value in (("num_inference_steps", num_inference_steps), ("iterations", iterations)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}.")
        if early_stop is not None and not isinstance(early_stop, EarlyStopping):
            raise ValueError(
                f"`early_stop` must be None or an EarlyStopping(patience, min_delta), got {early_stop!r}."
            )
        if num_images_per_prompt != 1:
            raise ValueError(
                f"`num_images_per_prompt` must be 1, got {num_images_per_prompt!r}: DiffInvPipeline makes one "
                f"reconstruction per feature map (the feature maps are the batch). For several samples of a map, "
                f"repeat it in the batch, or call again with another `generator`."
            )
        given = {"mapper": mapper, "image": image}  # the start arguments, by the `init` that takes them
        for name, start in _STARTS.items():
            if init == name and not start.valid(given[name]):
                raise ValueError(f"`init={name!r}` needs `{name}=` {start.needs}, got {type(given[name]).__name__}.")
            if init == name and latents is not None:
                raise ValueError(f"pass either `latents` or `init={name!r}`, not both.")
            if init != name and start.exclusive and given[name] is not None:
                raise ValueError(f"`{name}` is the start of `init={name!r}`, but `init` is {init!r}.")
        img2img_steps(num_inference_steps, strength)  # checks `strength` (used by every start of _STARTS)
        check_weight("temporal_weight", temporal_weight)
        check_weight("latent_prior_weight", latent_prior_weight)
        check_weight("guidance_scale", guidance_scale)
        check_weight("learning_rate", learning_rate)
        if input_size is not None:
            input_size = check_input_size(input_size)
            if isinstance(features, FeatureSet):
                raise ValueError(
                    f"`input_size` is for a feature tensor; the FeatureSet records the input size its features were "
                    f"made at ({features.preprocessing.get('input_size') or list(features.input_size)}), got "
                    f"{input_size!r}."
                )
        bad_keys = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad_keys:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {bad_keys}, expected keys in {self._callback_tensor_inputs}."
            )
        if self.target is None and target is None and not isinstance(features, FeatureSet):
            raise ValueError(
                "the pipeline has no target network: pass `target=` to `from_pretrained`/`load_pipeline`, "
                "call `pipe.set_target(...)`, or pass a FeatureSet (which names its target)."
            )

    def resolve_call_features(
        self,
        features: torch.Tensor | FeatureSet,
        height: int | None,
        width: int | None,
        input_size: tuple[int, int] | None,
        layer: str | None,
        target: TargetNetwork | None = None,
    ) -> _CallFeatures:
        """Resolves the features of one call once: the target, the size it resizes to, the output size.

        The target is the call's ``target`` (it keeps its own input size), else the pipeline's, else (a
        pipeline without one) the FeatureSet's own, rebuilt for this call and not kept. A target that follows
        the features (``target_follows_features``: given by name) resizes to the input size the features were
        made at, passed to each feature call
        (:meth:`TargetNetwork.feature <diffinv.targets.TargetNetwork.feature>`'s ``input_size``), so
        the target itself never changes and calls can share the pipeline. The features are checked
        with one probe forward pass (:func:`~diffinv.features.resolve_features`).
        """
        if target is not None:
            built = False
        elif self.target is not None:
            target, built = self.target, self.config.target_follows_features
        else:
            target, built = features.to_target().to(self.device), False
        size = self._features_input_size(target, built, features, height, width, input_size)
        height, width = self._image_size(features, height, width, size or target.input_size)
        if not isinstance(features, FeatureSet):  # a FeatureSet carries its layer (an explicit `layer` must be it)
            default = self.layer if target is self.target else (target.layers[0] if len(target.layers) == 1 else None)
            if layer is None and default is None:
                raise ValueError(
                    f"`layer` is required: the target {target.name!r} has several layers {target.layers}."
                )
            layer = layer or default
        feats, layer, _ = resolve_features(target, features, (height, width), layer, input_size=size)
        return _CallFeatures(feats.to(target.mean.device, torch.float32), target, layer, size, (height, width))

    def prepare_latents(
        self,
        shape: tuple[int, int, int, int],
        scheduler: DDIMScheduler,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        init: str = "noise",
        start=None,
        features: torch.Tensor | FeatureSet | None = None,
    ) -> torch.Tensor:
        """The initial latents ``z_T`` ``(N, C, h, w)``, fp32 on ``device``.

        ``latents`` as given (checked against ``shape``); for a hybrid start (``init``, one of ``_STARTS``) the
        clean latent of ``start`` (a mapper's from ``features``, or the VAE-encoded image), noised as
        :meth:`img2img` does to the first timestep of ``scheduler``; else Gaussian noise times the scheduler's
        ``init_noise_sigma``.
        """
        height, width = shape[2] * self.vae_scale_factor, shape[3] * self.vae_scale_factor
        if init in _STARTS:  # hybrid: the start's clean latent, noised as img2img does
            clean = _STARTS[init].clean(self, start, features, (height, width)).to(device, torch.float32)
            clean = clean.expand(shape).contiguous() if len(clean) == 1 and shape[0] != 1 else clean
            if tuple(clean.shape) != shape:
                raise ValueError(f"the `{init}` start gives latents {tuple(clean.shape)}, the pipeline needs {shape}.")
            latents = self._noised_start(clean, scheduler, generator)
        elif latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
            latents = latents * scheduler.init_noise_sigma
        elif tuple(latents.shape) != shape:
            raise ValueError(
                f"`latents` has shape {tuple(latents.shape)}, expected {shape} for {height}x{width} images."
            )
        return latents.to(device, torch.float32).clone()

    @torch.no_grad()
    def __call__(
        self,
        features: torch.Tensor | FeatureSet,
        prompt: str | list[str] | None = DEFAULTS["prompt"],
        negative_prompt: str | list[str] | None = DEFAULTS["negative_prompt"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        iterations: int = DEFAULTS["iterations"],
        learning_rate: float = DEFAULTS["learning_rate"],
        height: int | None = None,
        width: int | None = None,
        input_size: tuple[int, int] | None = None,
        layer: str | None = None,
        loss: str = DEFAULTS["loss"],
        latent_prior_weight: float = DEFAULTS["latent_prior_weight"],
        temporal_weight: float = DEFAULTS["temporal_weight"],
        optimize: str = DEFAULTS["optimize"],
        gradient_checkpointing: bool = DEFAULTS["gradient_checkpointing"],
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        init: str = DEFAULTS["init"],
        mapper=None,
        image: torch.Tensor | PIL.Image.Image | list[PIL.Image.Image] | None = None,
        strength: float = DEFAULTS["strength"],
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (as diffusers' pipelines)
        max_retries: int = DEFAULTS["max_retries"],
        compile: bool | str = DEFAULTS["compile"],
        num_images_per_prompt: int = 1,
        early_stop: EarlyStopping | None = None,
        target: TargetNetwork | None = None,
        progress_bar_config: dict | None = None,
    ) -> DiffInvPipelineOutput | tuple:
        r"""Reconstructs images from features.

        Args:
            features: ``(N, ...)`` features of the target at ``layer``, or a
                :class:`~diffinv.features.FeatureSet` (which carries its layer and input size). Several
                feature maps are inverted at once, as a batch.
            prompt: ``None`` (default): the target's predicted class as ``"a photo of a {class}"``
                when it can classify the features (see :meth:`TargetNetwork.classify_features
                <diffinv.targets.TargetNetwork.classify_features>`), else no text;
                ``"auto"``: the same, and an error when impossible; a string, one string per image,
                or a prompt-file reference (``"@backgrounds:3"``, see :mod:`diffinv.prompts`);
                ``""``: no text.
            negative_prompt: used with classifier-free guidance (``guidance_scale > 1``).
            guidance_scale: classifier-free guidance weight; ``<= 1`` runs the UNet once per step on
                the prompt alone (use 0 or 1 for turbo models).
            num_inference_steps: K, the steps of the deterministic sampler (1 for turbo models).
            iterations: optimization iterations, under the one rule of
                :func:`diffinv.optimization.run_optimization` (Adam, cosine-annealed learning rate,
                each image's best iterate returned, non-finite steps skipped).
            learning_rate: Adam step size on the fp32 latents.
            height, width: image size, multiples of 8. Defaults: the FeatureSet's input size
                (rounded to a multiple of 8 when the target resizes its input anyway), else the
                UNet's native size (``unet.config.sample_size * vae_scale_factor``).
            input_size: for a tensor, the ``(H, W)`` the target network saw when it made the
                features (after its own resize). A target the pipeline built by name takes it
                (default: ``(height, width)`` when either is given, else its own input size); a
                FeatureSet carries it. A TargetNetwork passed in keeps its own input size.
            layer: the feature layer for a tensor (default: the pipeline's layer).
            loss: ``"nmse"`` (default), ``"mse"`` or ``"cosine"``.
            latent_prior_weight: weight of ``latent_prior(z_T)`` (keeps z_T Gaussian-like).
            temporal_weight: smoothing between consecutive latents of the batch (video frames).
            optimize: ``"initial"`` (z_T only) or ``"all"`` (z_T plus an offset to each intermediate
                latent of the chain).
            gradient_checkpointing: recompute each UNet call and the decode in the backward pass
                (memory nearly flat in K); off is faster and uses memory linear in K.
            generator: seeds the initial latents (one generator, or one per image).
            latents: ``(N, 4, H/8, W/8)`` initial latents instead of random ones.
            init: ``"noise"`` (default): start from Gaussian latents z_T; ``"mapper"``: the hybrid
                start — a trained :class:`~diffinv.models.FeatureMapper` predicts the clean latent
                from the features, it is noised as :meth:`img2img` does at ``strength`` and the
                optimization runs through the same chain (:meth:`img2img_chain`: the last
                ``img2img_steps(K, strength)`` sampler steps).
                ``"image"``: the hybrid start from any image estimate (a black-box decoder's, a GAN's,
                a file): ``image`` is encoded by the VAE and used as that clean latent.
            mapper: the FeatureMapper for ``init="mapper"``.
            image: for ``init="image"``: ``(N, 3, H, W)`` (or ``(1, 3, H, W)``, used for every feature
                map) in [0, 1], or PIL images; resized to the output size when it differs.
            strength: with ``init="mapper"`` or ``"image"``, how far into the chain the start is noised,
                in (0, 1] (see :func:`img2img_steps`).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`DiffInvPipelineOutput` (else a tuple of its fields).
            callback_on_step_end: ``fn(pipe, iteration, timestep, callback_kwargs) -> dict`` after
                each optimization iteration; returning ``{"latents": ...}`` replaces the latents;
                returning ``{"interrupt": True}`` stops early (this call only: the pipeline keeps no call state).
            callback_on_step_end_tensor_inputs: keys of ``callback_kwargs``, from
                ``_callback_tensor_inputs``.
            max_retries: with fp16 networks, how often an iteration whose gradient overflowed is
                retried with a halved loss scale before it is skipped (:class:`LossScaler`).
            compile: run the UNet, the VAE decoder and the target through ``torch.compile`` (``True``:
                inductor; a mode, ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or ``"max-autotune"``;
                or a backend name) (:mod:`diffinv.compilation`; compiled once per network and kept; a network
                whose compilation fails runs eagerly, with a warning): the same results within tolerance,
                slower first iterations, faster later ones.
            num_images_per_prompt: accepted for diffusers clients, and only as 1: the pipeline makes
                one reconstruction per feature map (the feature maps are the batch). For several
                samples of one map, repeat it in the batch or call again with another ``generator``.
            early_stop: stop each image whose loss has stopped improving
                (:class:`~diffinv.optimization.EarlyStopping`): its latents stay at its best iterate while
                the others run on; the loop ends when every image has stopped. ``None``: every image runs
                ``iterations``.
            target: this call's target network instead of the pipeline's (it keeps its own input size): what a
                caller sharing one pipeline between targets (threads, a cache) passes; the pipeline is not changed.
            progress_bar_config: this call's progress bar settings over the pipeline's
                (``set_progress_bar_config``), e.g. ``{"disable": True}``; the pipeline is not changed.

        Call defaults are those of :class:`~diffinv.inverters.diffusion.DiffusionConfig` (``CALL_DEFAULTS``), the one
        place they are written.

        Returns:
            :class:`DiffInvPipelineOutput`: images, per-image loss history, feature residual,
            prompts, skipped steps, the optimized latents and the fp32 redos of the decode.
        """
        # 1. Check inputs
        self.check_inputs(
            features, guidance_scale, num_inference_steps, iterations, learning_rate,
            input_size, latent_prior_weight, temporal_weight, optimize, latents, init, mapper, image, strength,
            output_type, callback_on_step_end_tensor_inputs, max_retries, num_images_per_prompt, early_stop, target,
        )  # fmt: skip
        if image is not None:
            image = self._start_images(image, len(features))

        # 2. Resolve the features once: the target, the input size it resizes to, the output size, the layer
        call = self.resolve_call_features(features, height, width, input_size, layer, target)
        feats, target, layer, (height, width) = call.features, call.target, call.layer, call.image_size

        # 3. Define call parameters
        batch_size = len(feats)
        device = self._execution_device
        compile = compile if backend(compile) else False
        do_cfg = guidance_scale > 1.0

        # 4. Prompts: resolve (automatic class prompt, prompt files) and encode
        prompts = self._resolve_prompts(prompt, call)
        negative = resolve_prompts(negative_prompt, batch_size, "negative_prompt") if negative_prompt else None
        prompt_embeds = self.encode_prompt(prompts, device, do_cfg, negative)

        # 5. Prepare the differentiable sampler: the whole chain, or its img2img tail for the hybrid start
        if init in _STARTS:
            scheduler = self.img2img_chain(num_inference_steps, strength, device)
        else:
            scheduler = self.chain_scheduler(num_inference_steps, device)

        # 6. Prepare the optimized variables (fp32 master copies): z_T (+ one offset per intermediate latent)
        factor = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        start = {"mapper": mapper, "image": image}.get(init)
        variables = [self.prepare_latents(shape, scheduler, device, generator, latents, init, start, features)]
        if optimize == "all":  # each (N, C, h, w): one block per image, as the one optimization rule needs
            variables += [torch.zeros_like(variables[0]) for _ in range(len(scheduler.timesteps) - 1)]

        # 7. The closure (loss and gradient; fp16: retried at a halved loss scale when the gradient
        #    overflowed), the step hook (callback_on_step_end, interrupt), and the optimization loop: the
        #    one rule of diffinv.optimization (cosine schedule, best iterate per image, non-finite steps
        #    skipped and counted); it leaves each image's best variables
        scaler = LossScaler(enabled=self.unet.dtype == torch.float16)
        objective = dict(
            features=feats, target=target, layer=layer, input_size=call.input_size, prompt_embeds=prompt_embeds,
            scheduler=scheduler, guidance_scale=guidance_scale, loss=loss, latent_prior_weight=latent_prior_weight,
            temporal_weight=temporal_weight, gradient_checkpointing=gradient_checkpointing, compile=compile,
        )  # fmt: skip
        iteration = 0
        fp32_decodes = torch.zeros(batch_size, dtype=torch.long)

        def closure(variables: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
            nonlocal iteration
            redone = torch.zeros(batch_size, dtype=torch.bool)  # this iteration's images decoded again in fp32
            for _attempt in range(max_retries + 1):
                scale = scaler.scale
                per_image, grads = self._gradient_step(variables, **objective, loss_scale=scale, redone=redone)
                if grads is None:
                    break  # the loss itself is not finite: no loss scale helps
                grads, found_inf = scaler.unscale(grads)
                scaler.update(found_inf)
                if not found_inf or scale <= 1.0:
                    break  # retrying only helps a gradient that overflowed at a large loss scale
            if grads is None or found_inf:
                logger.warning(f"iteration {iteration}: non-finite loss or gradient; step skipped.")
            fp32_decodes.add_(redone.long())
            iteration += 1
            return per_image, grads

        def on_step_end(i: int, per_image: torch.Tensor) -> bool:
            if callback_on_step_end is not None:
                available = {"latents": variables[0], "loss": per_image, "prompt_embeds": prompt_embeds}
                callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, scheduler.timesteps[0], callback_kwargs) or {}
                if "latents" in callback_outputs:
                    variables[0].copy_(callback_outputs["latents"])
                return bool(callback_outputs.get("interrupt", False))
            return False

        with self._call_progress_bar(iterations, progress_bar_config) as progress_bar:
            optimized = run_optimization(
                variables, closure, iterations=iterations, lr=learning_rate, num_images=batch_size,
                progress=progress_bar, callback=on_step_end, early_stop=early_stop,
            )  # fmt: skip

        # 8. Render the best latents seen, and how well their features match
        final_latents, images = self._sample(
            variables[0],
            prompt_embeds,
            scheduler,
            guidance_scale,
            variables[1:],
            gradient_checkpointing=False,
            compile=compile,
        )
        if not torch.isfinite(images).all():
            raise FloatingPointError(
                f"the reconstruction is not finite in {self.unet.dtype}: every step of some images failed "
                f"({optimized.skipped_steps} of {len(optimized.history)} iterations skipped). Run the networks in "
                f"bfloat16 or float32."
            )
        residual = feature_residual(target, images.to(_dtype_of(target)), feats, layer, input_size=call.input_size)

        # 9. Post-process
        if output_type == "latent":
            output = final_latents
        else:
            output = self.image_processor.postprocess(
                images, output_type=output_type, do_denormalize=[False] * batch_size
            )
        self.maybe_free_model_hooks()
        result = DiffInvPipelineOutput(
            images=output,
            loss_history=optimized.history,
            feature_residual=residual.cpu(),
            prompts=prompts,
            skipped_steps=optimized.skipped_steps,
            latents=variables[0].detach().cpu(),
            fp32_decodes=fp32_decodes,
        )
        return result if return_dict else result.to_tuple()

    # ------------------------------------------------------------------ call helpers
    def _features_input_size(
        self,
        target: TargetNetwork,
        built: bool,
        features,
        height: int | None,
        width: int | None,
        input_size: tuple[int, int] | None,
    ) -> tuple[int, int] | None:
        """The input size the target resizes to in this call; ``None`` keeps the target's own.

        Only a target that follows the features (``target_follows_features``: given by name) adapts: to a FeatureSet's
        recorded resize (else its input size: the images were fed as they were), or for a tensor to
        ``input_size``, else ``(height, width)`` when either is given.
        """
        if not built:
            if input_size is not None and tuple(input_size) != target.input_size:
                raise ValueError(
                    f"`input_size` is {tuple(input_size)} but the target {target.name!r} was passed in as a "
                    f"TargetNetwork with input size {target.input_size}, which it keeps: build it with "
                    f"`input_size={tuple(input_size)}`, or give the target by name."
                )
            return None
        if isinstance(features, FeatureSet):
            recorded = features.preprocessing.get("input_size")
            return tuple(int(v) for v in recorded) if recorded else tuple(features.input_size)
        if input_size is not None:
            return tuple(int(v) for v in input_size)
        if height is not None or width is not None:
            return self._image_size(features, height, width, target.input_size)
        return None

    def _image_size(
        self, features, height: int | None, width: int | None, target_input_size: tuple[int, int] | None
    ) -> tuple[int, int]:
        """Output size from the arguments, the FeatureSet or the UNet; multiples of 8.

        A FeatureSet's size that is not a multiple of 8 is rounded to the nearest one when the
        target resizes its input (``target_input_size`` is not ``None``) anyway.
        """
        if height is None and width is None and isinstance(features, FeatureSet):
            height, width = features.input_size
            if (height % 8 or width % 8) and target_input_size is not None:
                # the target resizes its input anyway: any size near the original gives the same features
                height, width = nearest_multiple_of_8((height, width))
        else:
            sample_size = self.unet.config.sample_size
            sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
            height = height or sample_size * self.vae_scale_factor
            width = width or sample_size * self.vae_scale_factor
        if height % 8 or width % 8:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        return int(height), int(width)

    def _resolve_prompts(self, prompt, call: _CallFeatures) -> list[str]:
        """The prompt of each image: given (``@file`` references resolved), or the target's class."""
        if prompt is not None and prompt != "auto":
            return resolve_prompts(prompt, len(call.features))
        classes = call.target.classify_features(call.features, call.layer, call.image_size, input_size=call.input_size)
        if classes is None:
            if prompt == "auto":
                raise ValueError(
                    f"`prompt='auto'` needs a target with a classifier head and class names whose layer "
                    f"{call.layer!r} feeds the classifier alone; {call.target.name!r} cannot classify these features. "
                    f"Give a prompt."
                )
            return [""] * len(call.features)
        return [class_prompt(call.target.class_name(int(c))) for c in classes]
