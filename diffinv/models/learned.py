"""What the learned inverse maps (UpconvNet, FeatureMapper) share: per-channel feature
standardization, batched inference in eval mode, and the checks of their inputs and folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..features import FeatureSet, check_features

__all__ = [
    "MODEL_CLASSES",
    "FeatureStandardizer",
    "PerLayerModels",
    "check_model_input",
    "folder_kind",
    "resolve_model_dir",
]


class FeatureStandardizer:
    """Mixin for a ``ModelMixin`` whose input is features: stores their per-channel mean/std
    (buffers saved with the weights) and runs checked, batched inference."""

    def register_feature_stats(self, channels: int) -> None:
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Stores per-channel mean/std of training features (``(N, C, ...)``) for standardization."""
        dims = [0] + list(range(2, features.ndim))
        self.feature_mean.copy_(features.float().mean(dim=dims))
        self.feature_std.copy_(features.float().std(dim=dims).clamp_min(1e-6))

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (features.ndim - 2)
        return (features - self.feature_mean.view(shape)) / self.feature_std.view(shape)

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``self(features)`` in eval mode, ``batch_size`` at a time, float32 on the model's device."""
        was_training = self.training
        self.eval()
        try:
            out = [self(chunk.to(self.device)).float() for chunk in features.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)


# The class saved in a trained model's config.json (diffusers' ``_class_name``), per kind.
MODEL_CLASSES = {"decoder": "UpconvNet", "mapper": "FeatureMapper"}


def folder_kind(folder: str | os.PathLike) -> str | None:
    """What a folder holds: ``"decoder"``, ``"mapper"``, ``"diffusion model"`` or ``None`` (unknown)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return "diffusion model"
    try:
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return next((kind for kind, cls in MODEL_CLASSES.items() if cls == name), None)


def _check_kind(folder: Path, kind: str) -> None:
    found = folder_kind(folder)
    if found == kind or found is None and not (folder / "config.json").is_file():
        return
    option = {"decoder": "--decoder", "mapper": "--mapper", "diffusion model": "--model"}.get(found)
    raise ValueError(
        f"`{kind}` folder {str(folder)!r} is not a trained {kind}"
        + (
            f": this is a {found} folder; use {option} {str(folder)!r}."
            if option
            else f" (its config.json names no {MODEL_CLASSES[kind]}). Train one with `diffinv train-{kind}`."
        )
    )


def resolve_model_dir(path: str | os.PathLike, layer: str | None = None, kind: str = "mapper") -> Path:
    """A trained model folder: ``path`` itself, or ``path/<layer>`` for a folder of per-layer models.

    With ``layer=None`` a folder of per-layer models is accepted as it is (each sub-folder checked).

    Raises:
        FileNotFoundError: with what was looked for.
        ValueError: the folder holds another kind of model (e.g. a decoder given as the mapper),
            naming the option it belongs to.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"`{kind}` folder {str(path)!r} does not exist. Train one with `diffinv train-{kind}`."
        )
    if not path.is_dir():
        raise ValueError(f"`{kind}` {str(path)!r} is a file; expected the folder written by `diffinv train-{kind}`.")
    if (path / "config.json").is_file() or (path / "model_index.json").is_file():
        _check_kind(path, kind)
        return path
    subfolders = sorted(p.parent for p in path.glob("*/config.json"))
    for folder in subfolders:
        _check_kind(folder, kind)
    if layer is None and subfolders:
        return path
    if layer is not None and (path / layer / "config.json").is_file():
        return path / layer
    found = [p.name for p in subfolders]
    raise FileNotFoundError(
        f"`{kind}` folder {str(path)!r} has no config.json"
        + (f" and no sub-folder {layer!r}" if layer else "")
        + (f"; it has models for {', '.join(found)}." if found else ". Train one with `diffinv train-" + kind + "`.")
    )


class PerLayerModels:
    """Trained models of one kind, one per layer: a model given as it is, or a folder (of per-layer
    folders) whose models are loaded once each, frozen, on ``device``.

    Args:
        model: a trained model (``cls``) or its folder / a folder of per-layer folders.
        cls: :class:`~diffinv.models.UpconvNet` or :class:`~diffinv.models.FeatureMapper`.
        kind: ``"decoder"`` or ``"mapper"`` (for messages and the folder-kind check).
        device: where the models run.

    Raises:
        FileNotFoundError, ValueError: as :func:`resolve_model_dir` (missing folder, wrong kind).
    """

    def __init__(self, model, cls, kind: str, device):
        self.cls, self.kind, self.device = cls, kind, device
        self._models: dict = {}
        if isinstance(model, cls):
            self._models[model.config.layer] = model.to(device).eval().requires_grad_(False)
            self.path = None
        else:
            self.path = resolve_model_dir(model, kind=kind)

    def __call__(self, layer: str):
        """The model trained on ``layer``."""
        if layer in self._models:
            return self._models[layer]
        if self.path is None:
            trained = ", ".join(str(k) for k in self._models)
            raise ValueError(f"`features` come from layer {layer!r} but the {self.kind} was trained on {trained}.")
        model = self.cls.from_pretrained(str(resolve_model_dir(self.path, layer, self.kind)))
        if model.config.layer != layer:
            raise ValueError(
                f"`features` come from layer {layer!r} but the {self.kind} in {str(self.path)!r} was "
                f"trained on {model.config.layer!r}."
            )
        self._models[layer] = model.to(self.device).eval().requires_grad_(False)
        return self._models[layer]


def _feature_error(features_shape, expected, config) -> str:
    return (
        f"`features` have shape {tuple(features_shape)} but this model was trained on layer {config.layer!r} of "
        f"{config.target!r} at input size {tuple(config.input_size or ())}, whose features are "
        f"(N, {', '.join(map(str, expected))}). Use the model trained for this layer and size."
    )


def check_model_input(
    model, features: torch.Tensor | FeatureSet, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Checks features (tensor or FeatureSet) against a mapper's/decoder's config; returns the tensor.

    ``image_size``: the input size the features are for (what ``resolve_features`` found), checked
    against the size the model was trained at.
    """
    config = model.config
    if image_size is not None and config.input_size and tuple(image_size) != tuple(config.input_size):
        raise ValueError(
            f"`features` are for input size {tuple(image_size)} but this model was trained at "
            f"{tuple(config.input_size)}."
        )
    if isinstance(features, FeatureSet):
        if config.layer and features.layer != config.layer:
            raise ValueError(
                f"`features` come from layer {features.layer!r} but this model was trained on layer {config.layer!r}."
            )
        if config.target and features.target != config.target:
            raise ValueError(
                f"`features` come from target {features.target!r} but this model was trained on {config.target!r}."
            )
        if config.input_size and tuple(features.input_size) != tuple(config.input_size):
            raise ValueError(
                f"`features` were extracted at input size {tuple(features.input_size)} but this model was trained "
                f"at {tuple(config.input_size)}."
            )
        features = features.features
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"`features` must be a torch.Tensor or a FeatureSet, got {type(features).__name__}.")
    expected = tuple(config.feature_shape)
    if features.ndim < 2 or tuple(features.shape[1:]) != expected:
        raise ValueError(_feature_error(features.shape, expected, config))
    check_features(features, expected)
    return features
