"""``shredder:L``: Shredder (Mireshghallah et al. 2020), a learned additive noise at the split.

The noise is ``(mu + sigma * eps) x`` the std of each image's features, ``eps`` standard normal and fresh
at every call (:func:`shredder_noise`); ``mu`` and ``log sigma`` (one per feature entry) are trained with
the task loss minus ``L`` x the mean ``log sigma`` (the noise as large as possible while the task loss
stays low); the client is frozen. Deployed as the target itself and its learned noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..targets import TargetNetwork
from .base import DefenseFamily, non_negative, untrained
from .training import DEFAULT_CONFIG, DefenseTrainConfig, TrainedState, TrainingLoop, checked_labels, forward

__all__ = ["SHREDDER", "shredder_noise", "train_shredder"]


def shredder_noise(
    features: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shredder's additive noise for ``features`` ``(N, ...)``: ``(mean + exp(log_scale) * eps) x`` each image's
    feature std, ``eps`` standard normal drawn from ``generator`` (fresh at every call)."""
    device = generator.device if generator is not None else features.device
    eps = torch.randn(features.shape, generator=generator, device=device).to(features)
    std = features.detach().flatten(1).std(dim=1).view(-1, *([1] * (features.ndim - 1)))
    return (mean.to(features) + log_scale.to(features).exp() * eps) * std


def train_shredder(
    target: TargetNetwork,
    layer: str,
    lam: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DEFAULT_CONFIG,
    progress: bool = True,
) -> TrainedState:
    """Shredder: a learned additive noise at the split (:func:`shredder_noise`), trained with ``task loss - lam x
    mean log sigma``; the client is frozen. ``meta["privacy_before"/"privacy_after"]``: the noise's size, the rms of
    ``mu + sigma * eps`` relative to the features' std."""
    labels = checked_labels(target, layer, images, labels)
    device = target.mean.device
    with torch.no_grad():
        shape = target.feature(images[:1].to(device), layer).shape[1:]
    mean = torch.zeros(shape, device=device, requires_grad=True)
    log_scale = torch.full(shape, math.log(0.1), device=device, requires_grad=True)
    size = lambda: float((mean.detach() ** 2 + log_scale.detach().exp() ** 2).mean().sqrt())  # noqa: E731
    before = size()
    optimizer = torch.optim.Adam([mean, log_scale], lr=config.noise_learning_rate)
    loop = TrainingLoop("shredder", layer, images, labels, config, progress, device)
    noise_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    for step in range(config.steps):
        x, y = loop.batch()
        _, logits = forward(target, layer, x, edit=lambda f: f + shredder_noise(f, mean, log_scale, noise_generator))
        task = F.cross_entropy(logits.float(), y)
        objective = task - lam * log_scale.mean()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(max=math.log(100.0))
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=size()):
            break
    return TrainedState(
        {"noise/mean": mean.detach().cpu(), "noise/log_scale": log_scale.detach().cpu()},
        loop.meta(
            "shredder",
            lam,
            layer,
            privacy="noise size (rms, relative to the features' std)",
            privacy_before=before,
            privacy_after=size(),
        ),
    )


def _deploy_shredder(target, layer, strength, state: TrainedState):
    """Shredder's deployment: the target itself and its learned noise, fresh at every call."""
    try:
        mean, log_scale = state.tensors["noise/mean"], state.tensors["noise/log_scale"]
    except KeyError as err:
        raise ValueError(
            f"shredder state: expected the tensors noise/mean and noise/log_scale, missing {err}."
        ) from None

    def transform(features, generator, straight_through):
        return features + shredder_noise(features, mean, log_scale, generator)

    return target, transform


SHREDDER = DefenseFamily(
    "shredder",
    untrained,
    non_negative,
    "a finite number >= 0 (the weight of the noise's log scale)",
    "0.1",
    True,
    train=train_shredder,
    deploy=_deploy_shredder,
)
