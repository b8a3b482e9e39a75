"""Dosovitskiy & Brox (CVPR 2016): a trained up-convolutional decoder, features -> pixels.

The learned black-box baseline: no diffusion model, no gradients of the target, only
(image, feature) pairs to train on (:func:`diffinv.jobs.training.train_decoder`); the
network is :class:`~diffinv.models.UpconvNet`.

Example:
    >>> inverter = DecoderInverter(target, decoder="out/decoder_blocks.2")
    >>> out = inverter(feature_set)
    >>> out.images.shape
    torch.Size([4, 3, 128, 128])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .. import models  # UpconvNet imports diffusers when first used
from ..models.learned import PerLayerModels, check_model_input, resolve_model_dir
from ..resources import learned_model_cost
from ..targets import TargetNetwork
from .base import Inverter
from .config import InverterConfig, OptionInfo, option

__all__ = ["DecoderConfig", "DecoderInverter"]


@dataclass(frozen=True)
class DecoderConfig(InverterConfig):
    """The decoder inverter's settings.

    Attributes:
        batch_size: features decoded per forward pass.
        path: the folder the decoder(s) come from (filled in by the inverter; ``None`` for a decoder
            instance).
    """

    method = "decoder"
    folders = ("path",)
    derived = ("path",)

    batch_size: int = option(32, "positive_int")
    path: str | None = option(None, "optional_str")


class DecoderInverter(Inverter):
    """Black-box inversion with a trained :class:`UpconvNet`.

    Args:
        target: the network whose features are inverted (used for checks and the residual).
        decoder: a trained decoder, or its folder (``save_pretrained`` output), or a folder
            with one trained decoder per layer in sub-folders named after the layers.
        config: a :class:`DecoderConfig` (default: its defaults).
        **options: fields of :class:`DecoderConfig` (``batch_size``).

    Raises:
        FileNotFoundError: no trained decoder in ``decoder``.
        ValueError: features of another layer, target or input size than the decoder's.

    Example:
        >>> out = DecoderInverter(target, decoder="decoders/")(FeatureSet.load("f.safetensors"))
    """

    name = "decoder"
    white_box = False
    config_class = DecoderConfig
    extra_options = ("decoder",)
    extra_flags = {"decoder": OptionInfo(help="a `diffinv train-decoder` folder (or per-layer folders)")}
    required = {"decoder": "a trained decoder or its folder (from `diffinv train-decoder`)"}
    roles = frozenset({"start"})
    trained_model = "decoder"

    @classmethod
    def check_options(cls, options):
        """A ``decoder`` folder holds a trained decoder (or one per layer)."""
        if isinstance(options.get("decoder"), (str, os.PathLike)):
            resolve_model_dir(options["decoder"], kind="decoder")

    @classmethod
    def memory_cost(cls, options, shape):
        return {"decoder": learned_model_cost(shape)}

    def __init__(
        self,
        target: TargetNetwork,
        *,
        decoder: models.UpconvNet | str | os.PathLike,
        config: DecoderConfig | None = None,
        **options,
    ):
        super().__init__(target, config, **options)
        self._decoders = PerLayerModels(decoder, models.UpconvNet, "decoder", target.mean.device)
        self.config = replace(self.config, path=self._decoders.path)

    def decoder_for(self, layer: str) -> models.UpconvNet:
        """The decoder trained on ``layer`` (loaded once, on the target's device)."""
        return self._decoders(layer)

    def _prepare(self, features, layer, size):
        check_model_input(self.decoder_for(layer), features, size)

    def _reconstruct(self, features, layer, size, *, generator, progress):
        images = self.decoder_for(layer).reconstruct(features, self.config.batch_size)
        return images, torch.zeros(0, len(images)), {}
