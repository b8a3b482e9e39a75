"""Loading :class:`~diffinv.pipelines.DiffInvPipeline`: from a diffusers-format Stable Diffusion model (a folder, or a
Hub id in the local cache; errors that say how to provide the files offline), and with random weights from a
weight-free definition (``tiny``, ``sd15``, ``sd-turbo``: :mod:`diffinv.pipelines.definitions`)."""

from __future__ import annotations

import os

import diffusers
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

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
from diffinv.targets import TargetNetwork

__all__ = ["LoadingMixin"]


class LoadingMixin:
    """:meth:`from_pretrained` and :meth:`from_definition` of :class:`~diffinv.pipelines.DiffInvPipeline`. Listed
    before ``DiffusionPipeline`` among its bases: :meth:`from_pretrained` overrides diffusers'."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffusionPipeline:
        r"""Loads a diffusers-format Stable Diffusion model (a directory or a Hub id in the HF cache).

        SD 1.x/2.x and one-step turbo models load; their extra components (safety checker,
        feature extractor) are not loaded. Keyword arguments are those of
        ``DiffusionPipeline.from_pretrained`` (``torch_dtype``, ``variant``, ``local_files_only``,
        ...) plus ``target``, ``layer`` and ``target_weights`` (see :class:`~diffinv.pipelines.DiffInvPipeline`).

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
    ) -> DiffusionPipeline:
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
