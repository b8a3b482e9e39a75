"""White-box inversion through a Stable Diffusion prior, as an :class:`Inverter`.

An adapter around :class:`diffinv.pipelines.DiffInvPipeline` so that the CLI and the
benchmark use the diffusion method like the other inverters: images in [0, 1] at the
requested size, per-image loss history and feature residual in an :class:`InversionOutput`.

Example:
    >>> inverter = DiffusionInverter(target, model="path/to/stable-diffusion-v1-5", num_inference_steps=10)
    >>> out = inverter(feature_set)
    >>> out.images.shape, out.info["prompts"]
"""

from __future__ import annotations

import functools
import inspect
import os

import torch
import torch.nn.functional as F

from ..pipelines import DiffInvPipeline, load_pipeline
from ..targets import TargetNetwork
from .base import Inverter

__all__ = ["DiffusionInverter"]


@functools.lru_cache(maxsize=1)
def _cached_pipeline(model: str, torch_dtype: torch.dtype | None, device: str | None, attention: str):
    """The last loaded pipeline is kept: the benchmark builds one inverter per (layer, seed)."""
    return load_pipeline(model, torch_dtype=torch_dtype, device=device, attention=attention)


class DiffusionInverter(Inverter):
    """Optimizes Stable Diffusion latents so that the target's features of the image match.

    Args:
        target: the network whose features are inverted.
        model: a diffusers Stable Diffusion directory (or a cached Hub id) for real weights;
            ``"tiny"``, ``"sd15"``, ``"sd-turbo"`` for random weights built from ``pipelines/``
            (tests, timing); or a loaded :class:`~diffinv.pipelines.DiffInvPipeline`.
        torch_dtype: dtype of the diffusion networks; default bfloat16 on a GPU that supports it
            (else float16), float32 on CPU. Latents and the loss stay fp32; the target keeps
            its own dtype.
        device: where the diffusion networks run (default: CUDA when available).
        attention: ``"sdpa"`` or ``"xformers"``.
        **call_kwargs: arguments of the pipeline call (``prompt``, ``num_inference_steps``,
            ``num_iterations``, ``learning_rate``, ``guidance_scale``, ``optimize``,
            ``temporal_weight``, ...).

    Raises:
        TypeError: a keyword is not an argument of the pipeline call.
    """

    name = "diffusion"
    _reserved = ("features", "height", "width", "input_size", "generator", "output_type", "return_dict", "layer")

    def __init__(
        self,
        target: TargetNetwork,
        model="tiny",
        *,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        attention: str = "sdpa",
        **call_kwargs,
    ):
        super().__init__(target)
        accepted = set(inspect.signature(DiffInvPipeline.__call__).parameters) - {"self", *self._reserved}
        unknown = sorted(set(call_kwargs) - accepted)
        if unknown:
            raise TypeError(f"DiffusionInverter got unknown pipeline arguments {unknown}; accepted: {sorted(accepted)}.")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch_dtype is None and str(device).startswith("cuda"):
            torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if isinstance(model, (str, os.PathLike)):
            self.pipe = _cached_pipeline(os.fspath(model), torch_dtype, str(device), attention)
        else:
            self.pipe = model.to(device) if torch_dtype is None else model.to(device, torch_dtype)
        self.model = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        self.call_kwargs = call_kwargs

    @property
    def temporal_weight(self) -> float:
        """λ of the temporal smoothing between consecutive latents (video frames in one batch)."""
        return float(self.call_kwargs.get("temporal_weight", 0.0))

    @temporal_weight.setter
    def temporal_weight(self, value: float) -> None:
        self.call_kwargs["temporal_weight"] = float(value)

    def settings(self) -> dict:
        """The model (and its folder's fingerprint), the networks' dtype, and every plain argument of the
        pipeline call: the defaults of :meth:`DiffInvPipeline.__call__` updated by this inverter's."""
        plain = (bool, int, float, str, type(None))
        defaults = {name: p.default for name, p in inspect.signature(DiffInvPipeline.__call__).parameters.items()
                    if name not in ("self", "latents", "mapper", "callback_on_step_end", *self._reserved)
                    and isinstance(p.default, plain)}
        calls = {k: v for k, v in {**defaults, **self.call_kwargs}.items() if isinstance(v, plain)}
        return {**super().settings(), "torch_dtype": str(self.pipe.unet.dtype), **calls}

    def _reconstruct(self, features, layer, size, *, generator, progress, callback=None):
        # Generate at the nearest multiple of 8; resize back when the target resizes anyway.
        height, width = (max(8, 8 * round(v / 8)) for v in size)
        if (height, width) != size and self.target.input_size is None:
            raise ValueError(
                f"`image_size` {size} is not a multiple of 8 and target {self.target.name!r} does not resize its "
                f"input, so the diffusion model cannot produce images whose features have the given shape."
            )
        pipe = self.pipe.set_target(self.target, layer=layer)
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc=f"diffusion {layer}")
        hook = {}
        if callback is not None:  # the loss only: rendering a latent costs a full sampler pass

            def on_step_end(pipe, i, timestep, callback_kwargs):
                if callback(i, callback_kwargs["loss"], None):
                    pipe._interrupt = True
                return {}

            hook = {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["loss"]}
        out = pipe(features, height=height, width=width, layer=layer, generator=generator, output_type="pt",
                   **self.call_kwargs, **hook)
        images = out.images.float()
        if (height, width) != size:
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        info = {
            "skipped_steps": out.skipped_steps,
            "prompts": out.prompts,
            "model": str(self.model),
            "generated_size": [height, width],
            **{k: v for k, v in self.call_kwargs.items() if isinstance(v, (int, float, str))},
        }
        return images, out.loss_history, info
