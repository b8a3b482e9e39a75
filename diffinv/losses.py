"""Losses and priors for inversion: small functions that add and scale like numbers.

Feature losses compare a prediction with the target features, per image, and return a
``(N,)`` tensor (sum it for the optimizer, keep it per image for the history). Priors
take the image or the optimized variables.

Example:
    >>> loss = feature_loss(pred, feats, "nmse") + 1e-2 * total_variation(images)
    >>> loss.sum().backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FEATURE_LOSSES",
    "feature_loss",
    "mse",
    "normalized_mse",
    "cosine",
    "total_variation",
    "latent_prior",
    "temporal_smoothness",
]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def normalized_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||pred - target||^2 / ||target||^2`` per image: scale-free across layers."""
    diff = (pred.float() - target.float()).flatten(1).pow(2).sum(dim=1)
    return diff / target.float().flatten(1).pow(2).sum(dim=1).clamp_min(1e-12)


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(pred, target)`` per image."""
    return 1.0 - F.cosine_similarity(pred.float().flatten(1), target.float().flatten(1), dim=1)


FEATURE_LOSSES = {"mse": mse, "nmse": normalized_mse, "cosine": cosine}


def feature_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "nmse") -> torch.Tensor:
    """One of ``"mse"``, ``"nmse"`` (default) or ``"cosine"``, per image."""
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"`loss` must be one of {sorted(FEATURE_LOSSES)}, got {kind!r}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"predicted features {tuple(pred.shape)} and target features {tuple(target.shape)} differ in shape."
        )
    return FEATURE_LOSSES[kind](pred, target)


def total_variation(images: torch.Tensor, kind: str = "isotropic", beta: float = 2.0) -> torch.Tensor:
    """Total variation per image (Mahendran & Vedaldi's ``V^beta``), mean over pixels.

    Args:
        images: ``(N, C, H, W)``.
        kind: ``"isotropic"`` ``((dx^2 + dy^2)^(beta/2))`` or ``"anisotropic"``
            (``|dx|^beta + |dy|^beta``).
        beta: the exponent; 2 is smooth, 1 preserves edges.
    """
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    if kind == "isotropic":
        tv = (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2)
    elif kind == "anisotropic":
        tv = (dx.abs() + 1e-8).pow(beta) + (dy.abs() + 1e-8).pow(beta)
    else:
        raise ValueError(f"`tv` kind must be 'isotropic' or 'anisotropic', got {kind!r}.")
    return tv.flatten(1).mean(dim=1)


def latent_prior(latents: torch.Tensor) -> torch.Tensor:
    """Keeps a diffusion latent near the Gaussian shell: ``(||z||^2 / d - 1)^2`` per item."""
    z = latents.float().flatten(1)
    return (z.pow(2).mean(dim=1) - 1.0).pow(2)


def temporal_smoothness(variables: torch.Tensor) -> torch.Tensor:
    """``sum_t ||v_t - v_{t-1}||^2 / d`` over a batch of consecutive frames (a scalar).

    The mean over elements (``/ d``) keeps the weight comparable across sizes. Zero for a
    single frame.
    """
    if len(variables) < 2:
        return variables.sum() * 0.0
    diff = variables[1:].float() - variables[:-1].float()
    return diff.pow(2).flatten(1).mean(dim=1).sum()
