"""The memory a training run needs, estimated before any work and checked against its device."""

from __future__ import annotations

import torch

from ...resources import MemoryEstimate, check_memory, estimate_training
from ...targets import TargetNetwork
from .config import TrainConfig
from .precision import resolved_device
from .tasks import task_of

__all__ = ["check_training_memory", "estimate_training_memory"]


def estimate_training_memory(config: TrainConfig) -> MemoryEstimate:
    """The estimated peak memory of the training that ``config`` asks for
    (:func:`~diffinv.resources.estimate_training`): its decoder or mapper, ``hidden_channels`` wide, and the target
    are built on the ``meta`` device (shapes only, nothing allocated, no weights read)."""
    size = (int(config.size), int(config.size))
    with torch.device("meta"):
        target = TargetNetwork.from_name(config.target, config.layer, weights=None, input_size=None)
        model, vae = task_of(config.kind).meta_model(config, target.feature_shape(config.layer, size), size)
    return estimate_training(
        config.target,
        config.layer,
        size,
        model,
        batch_size=config.batch_size,
        name=config.kind,
        feature_loss=config.feature_weight > 0,
        vae=vae,
        device=resolved_device(config.device),
    )


def check_training_memory(config: TrainConfig) -> MemoryEstimate:
    """:func:`estimate_training_memory` checked against the memory of ``config.device``.

    Raises:
        InsufficientMemoryError: it does not fit (the message gives the estimate, the memory available and the
            flags that make it smaller).
    """
    return check_memory(
        estimate_training_memory(config),
        resolved_device(config.device),
        job="the training",
        hint="Use a narrower model (--hidden-channels), a smaller batch (--batch-size; "
        "--train-batch-size in atlas and audit) or a smaller --size.",
    )
