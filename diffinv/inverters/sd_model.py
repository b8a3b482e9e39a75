"""The Stable Diffusion folder that the diffusion-based methods (diffusion, mapper) share: its check and its size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..models.learned import folder_kind
from ..pipelines.definitions import (
    DEFINITIONS,
    ModelFilesNotFoundError,
    check_model_dir,
    definition_dir,
    is_local_path,
)
from ..resources import ComputeShape, diffusion_cost
from .config import OptionError

__all__ = ["MODEL_HELP", "check_model_option", "model_cost"]

MODEL_HELP = (
    "a diffusers Stable Diffusion folder, or tiny/sd15/sd-turbo (random weights: for trying the diffusion "
    "path and timing, not for real reconstructions)"
)


def check_model_option(method: str, options: Mapping) -> None:
    """``options["model"]``, where it is a local path: a diffusers folder with the files it needs
    (:class:`OptionError` / ``ModelFilesNotFoundError``); names of :data:`DEFINITIONS` and Hub ids pass."""
    model = options.get("model")
    if not isinstance(model, (str, os.PathLike)) or os.fspath(model) in DEFINITIONS:
        return
    path = Path(model).expanduser()
    if not (is_local_path(os.fspath(model)) or path.exists()):
        return
    if not path.is_dir():
        raise OptionError(
            method,
            "model",
            os.fspath(model),
            message=(
                f"method {method!r}: `model` {os.fspath(model)!r} is not a folder; expected a diffusers Stable "
                f"Diffusion folder, or {', '.join(DEFINITIONS)} for random weights."
            ),
        )
    kind = folder_kind(path)
    if kind is not None and kind != "diffusion model":  # a trained model's folder, given for the wrong option
        raise OptionError(
            method,
            "model",
            os.fspath(model),
            message=(
                f"method {method!r}: `model` {os.fspath(model)!r} is not a Stable Diffusion folder: this is a {kind} "
                f"folder; use `{kind}`."
            ),
        )
    try:
        check_model_dir(str(path))
    except ModelFilesNotFoundError as err:
        raise OptionError(method, "model", os.fspath(model), message=f"`model` {os.fspath(model)!r}: {err}") from None


def model_cost(options: Mapping, shape: ComputeShape) -> dict[str, int]:
    """:func:`~diffinv.resources.diffusion_cost` of ``options["model"]`` (a Hub id: Stable Diffusion 1.5's size)."""
    model = options.get("model")
    if not isinstance(model, (str, os.PathLike)):
        return diffusion_cost(None, shape)
    try:
        return diffusion_cost(definition_dir(model), shape)
    except ModelFilesNotFoundError:
        return diffusion_cost(model, shape)
