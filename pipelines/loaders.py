"""Loaders: a ready :class:`DiffInvPipeline` or a VAE from a definition name, a folder or a cached Hub id.

Example:
    >>> pipe = load_pipeline("tiny", target=target)               # random weights, offline, for tests
    >>> pipe = load_pipeline("path/to/sd15", torch_dtype=torch.float16, device="cuda")
    >>> vae = load_vae("path/to/sd15")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import logging
from torch import nn

from diffinv.pipelines.definitions import DEFINITIONS, definition_dir
from diffinv.pipelines.diffinv_pipeline import DiffInvPipeline
from diffinv.targets import TargetNetwork

__all__ = ["load_pipeline", "load_vae"]

logger = logging.get_logger(__name__)


def load_pipeline(
    model: str | os.PathLike | DiffusionPipeline,
    *,
    target: TargetNetwork | str | None = None,
    layer: str | None = None,
    target_weights: str | None = "default",
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attention: str = "sdpa",
    seed: int = 0,
    **kwargs,
) -> DiffInvPipeline:
    """A ready pipeline from a definition name, a diffusers directory / Hub id, or a pipeline.

    Args:
        model: ``"tiny"``, ``"sd15"``, ``"sd-turbo"`` build random weights from ``pipelines/``
            (tests, timing); a path to a diffusers directory or a cached Hub id loads real weights;
            a pipeline is used as is.
        target, layer, target_weights: the target network (see :class:`DiffInvPipeline`).
        torch_dtype: e.g. ``torch.float16`` / ``torch.bfloat16`` for the networks (GPU).
        device: where to run (default: where the weights are, i.e. CPU).
        attention: ``"sdpa"`` (PyTorch scaled-dot-product attention, the default) or ``"xformers"``
            (memory-efficient attention when xformers is installed; SDPA with a warning otherwise).
        seed: seeds the random weights of a definition.
        kwargs: passed to :meth:`DiffInvPipeline.from_pretrained`.

    Example:
        >>> pipe = load_pipeline("sd15", target="resnet50", layer="layer3", torch_dtype=torch.float16, device="cuda")
    """
    if attention not in ("sdpa", "xformers"):
        raise ValueError(f"`attention` must be 'sdpa' or 'xformers', got {attention!r}.")
    if isinstance(model, DiffusionPipeline):
        pipe = model
        if target is not None:
            pipe.set_target(target, layer=layer, weights=target_weights)
        if torch_dtype is not None:
            pipe.to(dtype=torch_dtype)
    elif str(model) in DEFINITIONS and not os.path.isdir(model):
        pipe = DiffInvPipeline.from_definition(
            model, target=target, layer=layer, target_weights=target_weights, torch_dtype=torch_dtype, seed=seed
        )
    else:
        pipe = DiffInvPipeline.from_pretrained(
            model, target=target, layer=layer, target_weights=target_weights, torch_dtype=torch_dtype, **kwargs
        )
    if device is not None:
        pipe.to(device)
    if attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except (ImportError, ModuleNotFoundError, ValueError) as err:
            logger.warning(f"xformers attention is not available ({err}); using PyTorch SDPA attention.")
    return pipe


def _builtin_dir(name: str) -> Path | None:
    """The folder of a weightless definition in ``pipelines/`` (random weights: timing only)."""
    return definition_dir(name) if name in DEFINITIONS else None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def load_vae(model: str | os.PathLike | AutoencoderKL, *, torch_dtype: torch.dtype | None = None) -> AutoencoderKL:
    """The ``AutoencoderKL`` of a Stable Diffusion model, frozen, in eval mode.

    Args:
        model: a diffusers model directory (with a ``vae/`` sub-folder) or a VAE directory,
            a Hugging Face id already in the local cache, one of ``diffinv.pipelines.DEFINITIONS``
            (architecture only, random weights: for tests and timing), or a VAE instance.
        torch_dtype: load the weights in this dtype.

    Raises:
        FileNotFoundError: the model is not on this machine, with how to provide it offline.
    """
    if isinstance(model, nn.Module):
        return model.eval().requires_grad_(False)
    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    path = Path(model)
    if path.is_dir():
        folder = path / "vae" if (path / "vae").is_dir() else path
        if _has_weights(folder):
            return AutoencoderKL.from_pretrained(str(folder), **kwargs).eval().requires_grad_(False)
    builtin = _builtin_dir(str(model))
    if builtin is not None:
        warnings.warn(f"`model` {str(model)!r} is an architecture without weights: the VAE has RANDOM weights "
                      f"(seeded, the same at every load; fine for tests and timing, meaningless for "
                      f"reconstructions).", stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(builtin / "vae")))
        return vae.to(torch_dtype or torch.float32).eval().requires_grad_(False)
    if not path.exists():
        try:
            return AutoencoderKL.from_pretrained(str(model), subfolder="vae", local_files_only=True,
                                                 **kwargs).eval().requires_grad_(False)
        except Exception as err:  # huggingface_hub raises several error types offline
            raise FileNotFoundError(
                f"`model` {str(model)!r} is neither a local diffusers directory nor in the Hugging Face cache "
                f"({type(err).__name__}). Offline, copy a diffusers-format Stable Diffusion folder (with "
                f"vae/config.json and vae/diffusion_pytorch_model.safetensors) to this machine and pass its path, "
                f"or use tiny, sd15 or sd-turbo for random weights."
            ) from err
    raise FileNotFoundError(
        f"`model` {str(model)!r} has no VAE weights: expected {str(path / 'vae')!r} with config.json and "
        f"diffusion_pytorch_model.safetensors (a diffusers-format Stable Diffusion folder)."
    )
