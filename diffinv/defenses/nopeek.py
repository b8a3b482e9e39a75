"""``nopeek:A``: NoPeek (Vepakomma et al. 2020), a learned defense.

The client layers (the parameters the split's features depend on,
:func:`~diffinv.defenses.training.client_parameter_names`) are fine-tuned with the task loss plus ``A`` x
the distance correlation between the input images and the split features (:func:`distance_correlation`).
Deployed as the network with the fine-tuned client, no transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..targets import TargetNetwork
from .base import DefenseFamily, non_negative, untrained
from .training import (
    DEFAULT_CONFIG,
    DefenseTrainConfig,
    TrainedState,
    TrainingLoop,
    checked_labels,
    deploy_client,
    forward,
    trainable_client,
)

__all__ = ["NOPEEK", "distance_correlation", "train_nopeek"]


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sample distance correlation (Székely et al. 2007) of ``x`` and ``y``, ``(N, ...)`` each, in [0, 1].

    Differentiable; 0 when the two are independent (in the limit of many samples), 1 when one is a
    similarity transform of the other.

    Raises:
        ValueError: fewer than 2 samples, or ``x`` and ``y`` with different numbers of samples.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"`x` and `y` must hold the same number (>= 2) of samples, got {len(x)} and {len(y)}.")

    def centered(t):
        d = torch.cdist(t.flatten(1).float(), t.flatten(1).float())
        return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()

    a, b = centered(x), centered(y)
    dcov = (a * b).mean().clamp_min(0)
    denominator = ((a * a).mean() * (b * b).mean()).sqrt().clamp_min(1e-12)
    return (dcov / denominator).sqrt()


@torch.no_grad()
def _probe_dcor(target: TargetNetwork, layer: str, images: torch.Tensor) -> float:
    return float(distance_correlation(images, target.feature(images, layer)))


def train_nopeek(
    target: TargetNetwork,
    layer: str,
    alpha: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DEFAULT_CONFIG,
    progress: bool = True,
) -> TrainedState:
    """NoPeek: fine-tunes the client layers with ``task loss + alpha x dCor(images, features)``.

    Args:
        target: the network (not changed; a copy is fine-tuned).
        layer: the split point.
        alpha: the weight of the distance correlation.
        images: ``(N, 3, H, W)`` training images in [0, 1]; labels: their true classes.

    Returns:
        the fine-tuned client parameters (``client/NAME``); ``meta["privacy_before"/"privacy_after"]``: the
        distance correlation on the first batch of images before and after.
    """
    labels = checked_labels(target, layer, images, labels)
    device = target.mean.device
    copy, client = trainable_client(target, layer, images)
    probe = images[: config.batch_size].to(device)
    before = _probe_dcor(copy, layer, probe)
    optimizer = torch.optim.Adam(client.values(), lr=config.learning_rate)
    loop = TrainingLoop("nopeek", layer, images, labels, config, progress, device)
    for step in range(config.steps):
        x, y = loop.batch()
        feats, logits = forward(copy, layer, x)
        task, dcor = F.cross_entropy(logits.float(), y), distance_correlation(x, feats)
        objective = task + alpha * dcor
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=dcor.item()):
            break
    after = _probe_dcor(copy, layer, probe)
    return TrainedState(
        {f"client/{n}": p.detach().cpu() for n, p in client.items()},
        loop.meta("nopeek", alpha, layer, privacy="distance correlation", privacy_before=before, privacy_after=after),
    )


NOPEEK = DefenseFamily(
    "nopeek",
    untrained,
    non_negative,
    "a finite number >= 0 (the weight of the distance correlation)",
    "1",
    False,
    train=train_nopeek,
    deploy=deploy_client,
)
