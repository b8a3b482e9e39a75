"""Loaders: a ready :class:`DiffInvPipeline`, a VAE or a TAESD decoder from a definition name, a folder or a
cached Hub id.

Example:
    >>> pipe = load_pipeline("tiny", target=target)               # random weights, offline, for tests
    >>> pipe = load_pipeline("path/to/sd15", torch_dtype=torch.float16, device="cuda", channels_last=True)
    >>> pipe = load_pipeline("path/to/sd15", taesd="path/to/taesd")  # TAESD decodes inside the loop
    >>> vae = load_vae("path/to/sd15")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline
from torch import nn

from diffinv.pipelines.definitions import DEFINITIONS, definition_dir
from diffinv.pipelines.diffinv_pipeline import DiffInvPipeline
from diffinv.targets import TargetNetwork

__all__ = ["ATTENTION", "load_pipeline", "load_taesd", "load_vae"]

ATTENTION = ("sdpa", "xformers")


def load_pipeline(
    model: str | os.PathLike | DiffusionPipeline,
    *,
    target: TargetNetwork | str | None = None,
    layer: str | None = None,
    target_weights: str | None = "default",
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attention: str = "sdpa",
    channels_last: bool = False,
    taesd: str | os.PathLike | AutoencoderTiny | None = None,
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
            (xformers' memory-efficient attention; a ValueError where xformers is not installed or there is
            no CUDA GPU).
        channels_last: store the UNet's and the VAE's (and TAESD's) weights channels-last
            (``to(memory_format=torch.channels_last)``: the same values, other convolution kernels).
        taesd: a lighter decoder for the optimization loop (:func:`load_taesd`: a TAESD folder, a cached
            Hub id, ``"random"`` or an ``AutoencoderTiny``); the full VAE still decodes the final images
            (:meth:`DiffInvPipeline.set_loop_vae`). ``None`` (default): the full VAE throughout.
        seed: seeds the random weights of a definition (and of ``taesd="random"``).
        kwargs: passed to :meth:`DiffInvPipeline.from_pretrained`.

    Example:
        >>> pipe = load_pipeline("sd15", target="resnet50", layer="layer3", torch_dtype=torch.float16, device="cuda")
    """
    if attention not in ATTENTION:
        raise ValueError(f"`attention` must be 'sdpa' or 'xformers', got {attention!r}.")
    if not isinstance(channels_last, bool):
        raise ValueError(f"`channels_last` must be True or False, got {channels_last!r}.")
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
            raise ValueError(
                f"`attention` is 'xformers' but xformers attention is not available here ({err}): install it "
                f"(`pip install xformers`, CUDA GPUs only) or use attention='sdpa'."
            ) from err
    if taesd is not None:
        pipe.set_loop_vae(load_taesd(taesd, pipe.vae, torch_dtype=pipe.vae.dtype, seed=seed))
    if channels_last:
        for module in (pipe.unet, pipe.vae, pipe.loop_vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    return pipe


def _random_taesd_config(vae: AutoencoderKL) -> dict:
    """An ``AutoencoderTiny`` config with ``vae``'s latent channels and scale: the real TAESD's sizes for a
    Stable Diffusion VAE (4 blocks: 8x), one small block per level otherwise (``tiny``: 2x)."""
    levels, channels = len(vae.config.block_out_channels), vae.config.latent_channels
    if levels == 4:
        return {"latent_channels": channels}
    return {
        "latent_channels": channels,
        "encoder_block_out_channels": (16,) * levels,
        "decoder_block_out_channels": (16,) * levels,
        "num_encoder_blocks": (1,) * levels,
        "num_decoder_blocks": (1,) * levels,
    }


def load_taesd(
    taesd: str | os.PathLike | AutoencoderTiny,
    vae: AutoencoderKL | None = None,
    *,
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> AutoencoderTiny:
    """A TAESD decoder (diffusers' ``AutoencoderTiny``), frozen, in eval mode.

    Args:
        taesd: a folder with its ``config.json`` and weights (e.g. a copy of ``madebyollin/taesd``, for
            Stable Diffusion 1.x/2.x), a Hugging Face id in the local cache, ``"random"`` (random weights
            sized for ``vae``, seeded by ``seed``: to try the path, meaningless images), or an instance.
        vae: the full VAE it stands in for (needed for ``"random"``).
        torch_dtype: load the weights in this dtype.

    Raises:
        FileNotFoundError: ``taesd`` names no folder with TAESD weights and no cached Hub id.
        ValueError: ``"random"`` without ``vae``.

    Example:
        >>> taesd = load_taesd("random", pipe.vae)
    """
    if isinstance(taesd, nn.Module):
        return taesd.to(torch_dtype or taesd.dtype).eval().requires_grad_(False)
    if str(taesd) == "random":
        if vae is None:
            raise ValueError("`taesd='random'` needs `vae`, the VAE whose latent channels and scale it takes.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoencoderTiny(**_random_taesd_config(vae))
        return model.to(vae.device, torch_dtype or torch.float32).eval().requires_grad_(False)
    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    path = Path(taesd)
    if path.is_dir() and (path / "config.json").is_file() and _has_weights(path):
        return AutoencoderTiny.from_pretrained(str(path), **kwargs).eval().requires_grad_(False)
    if not path.exists() and not str(taesd).startswith(("/", ".", "~")):
        try:
            return (
                AutoencoderTiny.from_pretrained(str(taesd), local_files_only=True, **kwargs)
                .eval()
                .requires_grad_(False)
            )
        except Exception as err:  # huggingface_hub raises several error types offline
            raise FileNotFoundError(
                f"`taesd` {str(taesd)!r} is neither a TAESD folder nor in the Hugging Face cache "
                f"({type(err).__name__}). Offline, copy a TAESD folder (config.json and "
                f"diffusion_pytorch_model.safetensors, e.g. from madebyollin/taesd) here and pass its path, or use "
                f"'random' to try the path with random weights."
            ) from err
    raise FileNotFoundError(
        f"`taesd` {str(taesd)!r} has no TAESD weights: expected a folder with config.json and "
        f"diffusion_pytorch_model.safetensors (e.g. a copy of madebyollin/taesd), or 'random'."
    )


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
        warnings.warn(
            f"`model` {str(model)!r} is an architecture without weights: the VAE has RANDOM weights "
            f"(seeded, the same at every load; fine for tests and timing, meaningless for "
            f"reconstructions).",
            stacklevel=2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(builtin / "vae")))
        return vae.to(torch_dtype or torch.float32).eval().requires_grad_(False)
    if not path.exists():
        try:
            return (
                AutoencoderKL.from_pretrained(str(model), subfolder="vae", local_files_only=True, **kwargs)
                .eval()
                .requires_grad_(False)
            )
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
