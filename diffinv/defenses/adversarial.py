"""``adversarial:L``: adversarial learning (DeepObfuscator, Li et al. 2019), a learned defense.

Min-max, alternating: a small decoder adversary learns to reconstruct the image from the features (pixel
MSE); the client is fine-tuned with the task loss minus ``L`` x the adversary's reconstruction error. Its
privacy measure is the error a *fresh* adversary reaches (:func:`fresh_adversary_error`). Deployed as the
network with the fine-tuned client, no transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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

__all__ = ["ADVERSARIAL", "fresh_adversary_error", "train_adversarial"]


class _Adversary(nn.Module):
    """The adversarial defense's decoder adversary: features -> image (two convolutions, bilinear upsampling)."""

    def __init__(self, channels: int, width: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1)
        )

    def forward(self, features):
        x = F.interpolate(self.inp(features.float()), size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))


def fresh_adversary_error(
    target: TargetNetwork, layer: str, images: torch.Tensor, config: DefenseTrainConfig, steps: int = 60
) -> float:
    """The reconstruction MSE that a *fresh* decoder adversary (:class:`_Adversary`, seeded by ``config.seed``)
    reaches after ``steps`` full-batch steps on ``target``'s features of ``images`` (computed once): the privacy
    measure of the adversarial defense, the same for the original and the fine-tuned client."""
    device = target.mean.device
    images = images.to(device)
    with torch.no_grad():
        feats = target.feature(images, layer).float()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed + 7)
    adversary = _Adversary(feats.shape[1], config.adversary_channels, tuple(images.shape[-2:])).to(device)
    torch.random.set_rng_state(generator_state)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=config.adversary_learning_rate)
    for _ in range(steps):
        loss = F.mse_loss(adversary(feats), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(F.mse_loss(adversary(feats), images))


def train_adversarial(
    target: TargetNetwork,
    layer: str,
    lam: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DEFAULT_CONFIG,
    progress: bool = True,
) -> TrainedState:
    """Adversarial learning (DeepObfuscator): alternating, an adversary step (a small decoder learns to reconstruct
    the images from the features, pixel MSE) then a client step (``task loss - lam x`` the adversary's MSE).
    ``meta["privacy_before"/"privacy_after"]``: the reconstruction MSE of a fresh adversary trained on the original
    and on the fine-tuned client's features (:func:`fresh_adversary_error`; history ``privacy``: the alternating
    adversary's MSE per step)."""
    labels = checked_labels(target, layer, images, labels)
    device = target.mean.device
    probe = images[: config.batch_size]
    before = fresh_adversary_error(target, layer, probe, config)
    copy, client = trainable_client(target, layer, images)
    with torch.no_grad():
        channels = copy.feature(images[:1].to(device), layer).shape[1]
    torch.manual_seed(config.seed)
    adversary = _Adversary(channels, config.adversary_channels, tuple(images.shape[-2:])).to(device)
    optimizer = torch.optim.Adam(client.values(), lr=config.learning_rate)
    adversary_optimizer = torch.optim.Adam(adversary.parameters(), lr=config.adversary_learning_rate)
    loop = TrainingLoop("adversarial", layer, images, labels, config, progress, device)
    for step in range(config.steps):
        x, y = loop.batch()
        # 1. the adversary learns to reconstruct from the client's current features
        with torch.no_grad():
            feats = copy.feature(x, layer)
        reconstruction = F.mse_loss(adversary(feats), x)
        adversary_optimizer.zero_grad(set_to_none=True)
        reconstruction.backward()
        adversary_optimizer.step()
        # 2. the client keeps the task and makes the adversary's reconstruction worse
        feats, logits = forward(copy, layer, x)
        task, leak = F.cross_entropy(logits.float(), y), F.mse_loss(adversary(feats), x)
        objective = task - lam * leak
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=reconstruction.item()):
            break
    meta = loop.meta(
        "adversarial",
        lam,
        layer,
        privacy="reconstruction MSE of a fresh adversary (on the first batch)",
        privacy_before=before,
        privacy_after=fresh_adversary_error(copy, layer, probe, config),
    )
    return TrainedState({f"client/{n}": p.detach().cpu() for n, p in client.items()}, meta)


ADVERSARIAL = DefenseFamily(
    "adversarial",
    untrained,
    non_negative,
    "a finite number >= 0 (the weight of the adversary's reconstruction error)",
    "1",
    False,
    train=train_adversarial,
    deploy=deploy_client,
)
