"""The kinds of model a training job trains, each one task (:data:`TRAINED_KINDS`): decoder and mapper.

A task builds its model, computes its loss on a batch of (image, feature) pairs, reconstructs images for
validation, names the :class:`TrainConfig` fields it ignores, and builds its model on the ``meta`` device for
the memory estimate.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import models, pipelines  # their learned models import diffusers when first used
from ...io import fingerprint_path
from ...losses import mse, normalized_mse
from ...pipelines.definitions import ModelFilesNotFoundError, definition_dir
from ...targets import TargetNetwork
from .config import TrainConfig

__all__ = ["TRAINED_KINDS", "DecoderTask", "MapperTask", "task_of"]


class DecoderTask:
    """Features -> pixels (UpconvNet)."""

    kind = "decoder"
    unused = ("model", "pixel_weight")  # TrainConfig fields a decoder ignores

    def __init__(self, config: TrainConfig, target: TargetNetwork, device):
        self.config, self.target = config, target

    def settings(self) -> dict:
        return {}

    def build(self):
        return models.UpconvNet.for_target(
            self.target,
            self.config.layer,
            (self.config.size,) * 2,
            hidden_channels=self.config.hidden_channels,
            min_channels=self.config.min_channels,
        )

    def loss(self, model, images, feats):
        pred = model(feats)
        parts = {"pixel": mse(pred, images).mean()}
        if self.config.feature_weight > 0:
            parts["feature"] = (
                self.config.feature_weight * normalized_mse(self.target.feature(pred, self.config.layer), feats).mean()
            )
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return model(feats).float().clamp(0, 1)

    @staticmethod
    def meta_model(config: TrainConfig, shape, size) -> tuple:
        """``(model, vae)`` for the memory estimate, built under ``torch.device("meta")``."""
        return models.UpconvNet(
            feature_shape=shape,
            image_size=size,
            hidden_channels=config.hidden_channels,
            min_channels=config.min_channels,
        ), None


class MapperTask:
    """Features -> diffusion latent (FeatureMapper), supervised by the VAE encoding."""

    kind = "mapper"
    unused = ("min_channels",)

    def __init__(self, config: TrainConfig, target: TargetNetwork, device):
        if not config.model:
            raise ValueError(
                "`model` is required to train a mapper: the Stable Diffusion model whose VAE "
                "defines the latent space (a diffusers folder, or 'tiny' for random weights)."
            )
        self.config, self.target = config, target
        self.vae = pipelines.load_vae(config.model).to(device)

    def settings(self) -> dict:
        """The model folder's fingerprint (a re-trained or replaced VAE defines another latent space)."""
        path = Path(self.config.model)
        return {"model_fingerprint": fingerprint_path(path) if path.exists() else None}

    def build(self):
        return models.FeatureMapper.for_target(
            self.target,
            self.config.layer,
            (self.config.size,) * 2,
            self.vae,
            model=self.config.model,
            hidden_channels=self.config.hidden_channels,
        )

    def loss(self, model, images, feats):
        with torch.no_grad():
            latents = models.encode_latents(self.vae, images).float()
        pred = model(feats)
        parts = {"latent": mse(pred, latents).mean()}
        if self.config.pixel_weight > 0 or self.config.feature_weight > 0:
            decoded = models.decode_latents(self.vae, pred)
            if self.config.pixel_weight > 0:
                parts["pixel"] = self.config.pixel_weight * mse(decoded, images).mean()
            if self.config.feature_weight > 0:
                parts["feature"] = (
                    self.config.feature_weight
                    * normalized_mse(self.target.feature(decoded, self.config.layer), feats).mean()
                )
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return models.decode_latents(self.vae, model(feats).float()).clamp(0, 1)

    @staticmethod
    def meta_model(config: TrainConfig, shape, size) -> tuple:
        """``(model, vae)`` for the memory estimate, built under ``torch.device("meta")``."""
        try:
            vae = definition_dir(config.model) if config.model else None
        except ModelFilesNotFoundError:
            vae = config.model  # a Hub id: Stable Diffusion's VAE is assumed
        latent = (4, max(1, size[0] // 8), max(1, size[1] // 8))  # Stable Diffusion's latent space
        return models.FeatureMapper(
            feature_shape=shape, latent_shape=latent, hidden_channels=config.hidden_channels
        ), vae


# The kinds of model a job can train, each declared once: ``TrainConfig.kind`` -> its task. An inverter class
# that needs a model trained per layer names its kind (``Inverter.trained_model``).
TRAINED_KINDS: dict[str, type] = {task.kind: task for task in (DecoderTask, MapperTask)}


def task_of(kind: str) -> type:
    """The task of ``kind`` (:data:`TRAINED_KINDS`)."""
    if kind not in TRAINED_KINDS:
        raise ValueError(
            f"`kind` {kind!r} is not a kind of model diffinv trains; expected one of {', '.join(TRAINED_KINDS)}."
        )
    return TRAINED_KINDS[kind]
