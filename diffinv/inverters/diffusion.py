"""White-box inversion through a Stable Diffusion prior, as an :class:`Inverter`.

An adapter around :class:`diffinv.pipelines.DiffInvPipeline` so that the CLI and the
benchmark use the diffusion method like the other inverters: images in [0, 1] at the
requested size, per-image loss history and feature residual in an :class:`InversionOutput`.
With ``start=`` it is a *hybrid*: another method's estimate is encoded by the VAE, noised to img2img
``strength`` and refined through the rest of the chain (a mapper's latent starts the chain directly); an
image whose refinement ends with a higher feature loss than its start keeps the start
(``info["kept_start"]``). The pipeline's call options and the overhead levers it is loaded with are the
fields of :class:`DiffusionConfig`, so that run manifests record them.

Example:
    >>> inverter = DiffusionInverter(target, model="path/to/stable-diffusion-v1-5", num_inference_steps=10)
    >>> out = inverter(feature_set)
    >>> hybrid = DiffusionInverter(target, model=..., start=DecoderInverter(target, decoder="decoders/"))
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import pipelines  # its names import diffusers when first used
from ..compilation import backend
from ..losses import feature_loss
from ..pipelines.definitions import is_local_path
from ..targets import TargetNetwork
from .base import Inverter, RefiningInverter
from .config import COMPILE_HELP, FEATURE_LOSSES, InverterConfig, OptionError, OptionInfo, option
from .sd_model import MODEL_HELP, check_model_option, model_cost

__all__ = ["CALL_DEFAULTS", "HYBRID_STRENGTH", "PIPELINE_OPTIONS", "DiffusionConfig", "DiffusionInverter"]

HYBRID_STRENGTH = 0.3  # DRAG++'s img2img strength for refining a black-box estimate
# The arguments of DiffInvPipeline.__call__ that the config holds (same names; their defaults are the config's,
# CALL_DEFAULTS); the others are the call's inputs and outputs (features, layer, sizes, generator, output_type, ...).
PIPELINE_OPTIONS = (
    "prompt",
    "negative_prompt",
    "guidance_scale",
    "num_inference_steps",
    "iterations",
    "learning_rate",
    "loss",
    "latent_prior_weight",
    "temporal_weight",
    "optimize",
    "gradient_checkpointing",
    "init",
    "strength",
    "max_retries",
    "compile",
)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(InverterConfig):
    """The diffusion inverter's settings: the model, the hybrid's ``keep_start``, and the options of the
    pipeline call (:data:`PIPELINE_OPTIONS`: the names and defaults of
    :meth:`DiffInvPipeline.__call__ <diffinv.pipelines.DiffInvPipeline.__call__>`, documented there).

    Attributes:
        model: the model folder or name, or the class name of a loaded pipeline (filled in by the inverter).
        torch_dtype: the dtype the diffusion networks run in (filled in by the inverter).
        keep_start: with a hybrid start, return the start for images whose refinement ends with a higher
            feature loss than it (the start counts as an iterate of the best-iterate rule).
        init: ``"noise"``, or the hybrid's start: ``"image"`` (an estimate encoded by the VAE) or
            ``"mapper"`` (a mapper's latents); set by the inverter from its ``start``.
        strength: with a hybrid start, how far into the chain it is noised (default
            :data:`HYBRID_STRENGTH` with a start).
        compile: ``torch.compile`` of the UNet, the decoder and the target: ``True``, a mode
            (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``) or a backend (:mod:`diffinv.compilation`).
        attention: ``"sdpa"`` or ``"xformers"`` (:func:`~diffinv.pipelines.load_pipeline`).
        channels_last: the UNet's and the decoders' weights channels-last.
        taesd: a lighter decoder inside the loop (a TAESD folder, a cached Hub id, or ``"random"``;
            :func:`~diffinv.pipelines.load_taesd`); the full VAE decodes the returned images.
    """

    method = "diffusion"
    folders = ("model", "taesd")
    derived = ("model", "torch_dtype", "init")
    streams_images = False  # the callback gets the loss only: rendering a latent costs a full sampler pass

    model: str = option("tiny", "str")
    torch_dtype: str | None = option(None, "optional_str")
    keep_start: bool = option(True, "bool")
    prompt: str | list[str] | None = option(None, "prompt", help="text prompt ('auto': the target's predicted class)")
    negative_prompt: str | list[str] | None = option(None, "prompt")
    guidance_scale: float = option(1.0, "non_negative")
    num_inference_steps: int = option(
        20, "positive_int", flag="--steps", help="sampler steps K of the diffusion chain"
    )
    iterations: int = option(100, "positive_int", help="optimization iterations")
    learning_rate: float = option(0.1, "non_negative")
    loss: str = option("nmse", choices=FEATURE_LOSSES)
    latent_prior_weight: float = option(0.1, "non_negative")
    temporal_weight: float = option(0.0, "non_negative")
    optimize: str = option("initial", choices=("initial", "all"))
    gradient_checkpointing: bool = option(True, "bool")
    init: str = option("noise", choices=("noise", "image", "mapper"))
    strength: float = option(
        0.5,
        "unit",
        help=f"with --init: how far the start is noised into the chain, in (0, 1] "
        f"(default {HYBRID_STRENGTH} with a start)",
    )
    max_retries: int = option(3, "non_negative_int")
    compile: bool | str = option(False, "compile", help=COMPILE_HELP)
    attention: str = option(
        "sdpa",
        choices=("sdpa", "xformers"),  # pipelines.loaders.ATTENTION
        help="attention kernels, PyTorch's sdpa (default) or xformers (when installed)",
    )
    channels_last: bool = option(
        False, "bool", help="the UNet's and the decoders' weights channels-last (for GPU convolutions)"
    )
    taesd: str | None = option(
        None,
        "optional_str",
        metavar="FOLDER|random",
        help="decode with the tiny TAESD decoder inside the loop (a folder with its config.json "
        "and weights, e.g. a copy of madebyollin/taesd; random: random weights, to try the "
        "path) and with the full VAE for the final images",
    )

    def __post_init__(self):
        super().__post_init__()
        try:
            backend(self.compile)
        except ValueError as err:
            raise OptionError(self.method, "compile", self.compile, message=f"method {self.method!r}: {err}") from None

    def call_options(self) -> dict:
        """The options of the pipeline call (:data:`PIPELINE_OPTIONS`)."""
        return {name: getattr(self, name) for name in PIPELINE_OPTIONS}


#: The defaults of the pipeline call (:data:`PIPELINE_OPTIONS`): the config's, the one place they are written
#: (:meth:`DiffInvPipeline.__call__ <diffinv.pipelines.DiffInvPipeline.__call__>` takes its defaults from here).
CALL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DiffusionConfig) if f.name in PIPELINE_OPTIONS}
# The pipeline's `init` for a hybrid start whose estimate is a diffusion latent, and for one that is an image.
_LATENT_INIT, _IMAGE_INIT = "mapper", "image"


@functools.lru_cache(maxsize=1)
def _cached_pipeline(
    model: str,
    torch_dtype: torch.dtype | None,
    device: str | None,
    attention: str,
    channels_last: bool,
    taesd: str | None,
):
    """The last loaded pipeline is kept: the benchmark builds one inverter per (layer, seed)."""
    return pipelines.load_pipeline(
        model, torch_dtype=torch_dtype, device=device, attention=attention, channels_last=channels_last, taesd=taesd
    )


class DiffusionInverter(RefiningInverter):
    """Optimizes Stable Diffusion latents so that the target's features of the image match.

    Args:
        target: the network whose features are inverted.
        model: a diffusers Stable Diffusion directory (or a cached Hub id) for real weights;
            ``"tiny"``, ``"sd15"``, ``"sd-turbo"`` for random weights built from ``pipelines/``
            (tests, timing); or a loaded :class:`~diffinv.pipelines.DiffInvPipeline`.
        config: a :class:`DiffusionConfig` (default: its defaults).
        torch_dtype: dtype of the diffusion networks; default bfloat16 on a GPU that supports it
            (else float16), float32 on CPU. Latents and the loss stay fp32; the target keeps
            its own dtype.
        device: where the diffusion networks run (default: CUDA when available).
        start: the hybrid start: an :class:`Inverter` whose reconstructions start the chain (run
            first, on the same features; its time counts), an image file (or a list of files, one per
            feature map), or a ``(N or 1, 3, H, W)`` tensor in [0, 1]. ``strength`` then defaults to
            :data:`HYBRID_STRENGTH` (0.3).
        **options: fields of :class:`DiffusionConfig`: the pipeline call's options (``prompt``,
            ``num_inference_steps``, ``iterations``, ``learning_rate``, ``guidance_scale``,
            ``optimize``, ``temporal_weight``, ...), ``keep_start`` and the levers the pipeline is loaded with
            (``attention``, ``channels_last``, ``taesd``; applied to a pipeline passed in as well).

    Raises:
        ValueError: an option :class:`DiffusionConfig` does not have, or a value it refuses.
    """

    name = "diffusion"
    config_class = DiffusionConfig
    extra_options = ("model", "torch_dtype", "device", "start")
    extra_flags = {"model": OptionInfo(help=MODEL_HELP)}
    required = {"model": "a diffusers Stable Diffusion folder, or tiny/sd15/sd-turbo for random weights"}
    roles = frozenset({"refiner"})
    refine_defaults = {"strength": HYBRID_STRENGTH}

    @classmethod
    def check_options(cls, options):
        """A ``model`` folder and a ``taesd`` folder hold what they need."""
        check_model_option(cls.name, options)
        taesd = options.get("taesd")
        if isinstance(taesd, (str, os.PathLike)) and os.fspath(taesd) != "random":
            path = Path(taesd).expanduser()
            if (is_local_path(os.fspath(taesd)) or path.exists()) and not (path / "config.json").is_file():
                what = "is not a TAESD folder (no config.json)" if path.exists() else "does not exist"
                raise OptionError(
                    cls.name,
                    "taesd",
                    os.fspath(taesd),
                    message=(
                        f"method {cls.name!r}: `taesd` {os.fspath(taesd)!r} {what}; expected a folder with an "
                        f"AutoencoderTiny's config.json and weights (a copy of madebyollin/taesd), or random."
                    ),
                )

    @classmethod
    def check_refinement(cls, options):
        if options.get("strength") == 0:
            raise OptionError(
                cls.name,
                "strength",
                0,
                message="`strength` 0 with a hybrid start: the start must be noised into the chain; expected (0, 1].",
            )

    @classmethod
    def memory_cost(cls, options, shape):
        """The Stable Diffusion weights and one checkpointed UNet call and VAE decode (:func:`model_cost`)."""
        return model_cost(options, shape)

    def __init__(
        self,
        target: TargetNetwork,
        model="tiny",
        *,
        config: DiffusionConfig | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        start: Inverter | str | os.PathLike | list | torch.Tensor | None = None,
        **options,
    ):
        if start is not None:
            options = {"strength": HYBRID_STRENGTH, **options}
        super().__init__(target, config, start=start, **options)
        init = "noise"
        if self.hybrid:  # the start declares whether its estimate is a latent (Inverter.latent_start)
            init = _LATENT_INIT if isinstance(start, Inverter) and start.latent_start else _IMAGE_INIT
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch_dtype is None and str(device).startswith("cuda"):
            torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        c = self.config
        if isinstance(model, (str, os.PathLike)):
            self.pipe = _cached_pipeline(
                os.fspath(model), torch_dtype, str(device), c.attention, c.channels_last, c.taesd
            )
        else:
            self.pipe = pipelines.load_pipeline(
                model,
                torch_dtype=torch_dtype,
                device=device,
                attention=c.attention,
                channels_last=c.channels_last,
                taesd=c.taesd,
            )
        taesd = c.taesd if c.taesd is not None or self.pipe.loop_vae is None else type(self.pipe.loop_vae).__name__
        self.config = dataclasses.replace(
            self.config,
            init=init,
            torch_dtype=str(self.pipe.unet.dtype),
            taesd=taesd,
            model=os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        )

    def settings(self) -> dict:
        """The config (the model and its folder's fingerprint, the networks' dtype, every plain option of
        the pipeline call), and the hybrid's start (see :class:`RefiningInverter`)."""
        out = super().settings()
        if not self.hybrid:
            out.pop("keep_start", None)
        return out

    def _reconstruct(self, features, layer, size, *, generator, progress, callback=None):
        call_kwargs, start, start_info = self.config.call_options(), None, {}
        if self.hybrid:
            start, start_info = self._start_estimate(features, layer, size, generator=generator, progress=progress)
            start = start.to(self.device)
            # the start itself, as the argument its `init` takes: a latent start's mapper, else the images
            latent = self._start.start_mapper(layer) if self.config.init == _LATENT_INIT else None
            call_kwargs[self.config.init] = latent if latent is not None else start
        # Generate at the nearest multiple of 8; resize back when the target resizes anyway.
        height, width = pipelines.nearest_multiple_of_8(size)
        if (height, width) != size and self.target.input_size is None:
            raise ValueError(
                f"`image_size` {size} is not a multiple of 8 and target {self.target.name!r} does not resize its "
                f"input, so the diffusion model cannot produce images whose features have the given shape."
            )
        # the cached pipeline is shared (threads, the benchmark): the target, the layer and the progress bar are
        # this call's arguments, so nothing of it is changed or copied
        hook = {}
        if callback is not None:  # the loss only: rendering a latent costs a full sampler pass

            def on_step_end(pipe, i, timestep, callback_kwargs):
                return {"interrupt": bool(callback(i, callback_kwargs["loss"], None))}

            hook = {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["loss"]}
        bar = {"disable": not progress, "leave": False, "desc": f"diffusion {layer}"}
        out = self.pipe(
            features,
            height=height,
            width=width,
            layer=layer,
            generator=generator,
            output_type="pt",
            target=self.target,
            progress_bar_config=bar,
            **call_kwargs,
            **hook,
        )
        images = out.images.float()
        if (height, width) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        if start is not None:
            start_info.update(self._keep_better_start(images, start, features, layer))
            images = start_info.pop("images")
        info = {
            "skipped_steps": out.skipped_steps,
            "fp32_decodes": out.fp32_decodes.tolist(),
            "prompts": out.prompts,
            "model": self.config.model,
            "generated_size": [height, width],
            **{k: v for k, v in call_kwargs.items() if k in PIPELINE_OPTIONS and isinstance(v, (int, float, str))},
            **start_info,
        }
        return images, out.loss_history, info

    @torch.no_grad()
    def _keep_better_start(
        self, refined: torch.Tensor, start: torch.Tensor, features: torch.Tensor, layer: str
    ) -> dict:
        """Per image, the refinement or (``keep_start``) its start when the start's feature loss is lower."""
        start = start.to(refined).expand_as(refined)
        kind = self.config.loss
        feats = features.to(self.device).float()
        losses = [
            feature_loss(self.target.feature(x.to(self.device), layer).float(), feats, kind).cpu()
            for x in (start, refined)
        ]
        kept = losses[0] < losses[1] if self.config.keep_start else torch.zeros(len(refined), dtype=torch.bool)
        images = torch.where(kept.view(-1, 1, 1, 1).to(refined.device), start, refined)
        return {
            "images": images,
            "kept_start": kept.tolist(),
            "start_loss": losses[0].tolist(),
            "refined_loss": losses[1].tolist(),
        }
