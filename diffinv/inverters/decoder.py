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

import torch

from .. import models  # UpconvNet imports diffusers when first used
from ..models.learned import PerLayerModels, check_model_input
from ..targets import TargetNetwork
from .base import Inverter

__all__ = ["DecoderInverter"]


class DecoderInverter(Inverter):
    """Black-box inversion with a trained :class:`UpconvNet`.

    Args:
        target: the network whose features are inverted (used for checks and the residual).
        decoder: a trained decoder, or its folder (``save_pretrained`` output), or a folder
            with one trained decoder per layer in sub-folders named after the layers.
        batch_size: features decoded per forward pass.

    Raises:
        FileNotFoundError: no trained decoder in ``decoder``.
        ValueError: features of another layer, target or input size than the decoder's.

    Example:
        >>> out = DecoderInverter(target, decoder="decoders/")(FeatureSet.load("f.safetensors"))
    """

    name = "decoder"
    white_box = False

    def __init__(self, target: TargetNetwork, *, decoder: models.UpconvNet | str | os.PathLike, batch_size: int = 32):
        super().__init__(target)
        self.batch_size = batch_size
        self._decoders = PerLayerModels(decoder, models.UpconvNet, "decoder", target.mean.device)
        self.path = self._decoders.path

    def decoder_for(self, layer: str) -> models.UpconvNet:
        """The decoder trained on ``layer`` (loaded once, on the target's device)."""
        return self._decoders(layer)

    def _prepare(self, features, layer, size):
        check_model_input(self.decoder_for(layer), features, size)

    def _reconstruct(self, features, layer, size, *, generator, progress):
        images = self.decoder_for(layer).reconstruct(features, self.batch_size)
        return images, torch.zeros(0, len(images)), {}
