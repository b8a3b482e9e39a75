"""The optimization every optimizing method runs: :func:`optimize` of a parameterization, and :func:`feature_stride`.

An optimizing method is a *parameterization*, ``(params, image_fn)`` as in lucent: the tensors to optimize and a
function that renders images in [0, 1] from them. :func:`optimize` minimizes the feature loss (plus the method's
priors) by the one rule of :mod:`diffinv.optimization` (schedule, best iterate per image, non-finite steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from ..compilation import feature_function
from ..losses import feature_loss, temporal_smoothness
from ..optimization import EarlyStopping, check_weight, run_optimization
from ..targets import TargetNetwork

__all__ = ["feature_stride", "optimize"]


def feature_stride(features: torch.Tensor, size: tuple[int, int]) -> float:
    """Input pixels per feature pixel of ``(N, C, h, w)`` features of ``size`` images; the image side for
    pooled ``(N, C)`` features (a single feature pixel). Methods that adapt a prior to the depth use it."""
    return size[0] / features.shape[-2] if features.ndim == 4 else float(max(size))


def optimize(
    params: Sequence[torch.Tensor],
    image_fn: Callable[[], torch.Tensor],
    target: TargetNetwork,
    features: torch.Tensor,
    layer: str,
    *,
    iterations: int,
    lr: float,
    loss: str = "nmse",
    prior_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temporal_weight: float = 0.0,
    temporal_fn: Callable[[], torch.Tensor] | None = None,
    temporal_anchor: torch.Tensor | None = None,
    lr_schedule: bool = True,
    final_fn: Callable[[], torch.Tensor] | None = None,
    desc: str = "invert",
    progress: bool = True,
    compile: bool | str = False,
    callback: Callable[[int, torch.Tensor, Callable[[], torch.Tensor]], bool | None] | None = None,
    feature_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    early_stop: EarlyStopping | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimizes ``feature_loss(target(image_fn()), features) + prior_fn(images)`` per image.

    The rule (schedule, best iterate per image, non-finite steps) is that of
    :func:`diffinv.optimization.run_optimization`.

    Args:
        params: tensors to optimize; the first dimension of each is one block per image.
        image_fn: renders ``(N, 3, H, W)`` images in [0, 1] from ``params``.
        prior_fn: per-image prior on the images, already weighted, ``(N,)``.
        temporal_weight, temporal_fn: adds ``temporal_weight * temporal_smoothness(temporal_fn())``
            — the frames of a video inverted as one batch.
        temporal_anchor: a fixed ``(1, ...)`` tensor in the space of ``temporal_fn()`` (e.g. the
            previous window's last frame), put in front of it in the temporal term.
        lr_schedule: cosine-anneal the learning rate to 0 over ``iterations``.
        final_fn: renders the returned images (default ``image_fn``); use it to drop
            training-time randomness such as jitter.
        compile: run the target's feature function through ``torch.compile``
            (:mod:`diffinv.compilation`).
        callback: ``callback(iteration, per_image_loss, render)`` after each iteration (see
            :meth:`Inverter.invert`); ``render()`` gives the current images as ``final_fn`` does.
        feature_transform: applied to the predicted features inside the loss (an attacker that knows
            a defense optimizes through it; see :meth:`Inverter.invert`).
        early_stop: stop images whose loss has stopped improving (the history then has fewer rows).

    Returns:
        ``(images, loss_history (iterations, N), info)`` with the images rendered from each
        image's best parameters, detached, on CPU.
    """
    check_weight("temporal_weight", temporal_weight)
    params = [p.requires_grad_(True) for p in params]
    features = features.to(params[0].device).float()
    feature_fn = feature_function(target, layer, compile)

    @torch.enable_grad()
    def closure(variables):
        images = image_fn()
        predicted = feature_fn(images)
        if feature_transform is not None:
            predicted = feature_transform(predicted)
        per_image = feature_loss(predicted, features, loss)
        if prior_fn is not None:
            per_image = per_image + prior_fn(images)
        total = per_image.sum()
        if temporal_weight > 0 and temporal_fn is not None:
            smoothed = temporal_fn()
            if temporal_anchor is not None:
                smoothed = torch.cat([temporal_anchor.to(smoothed), smoothed])
            total = total + temporal_weight * temporal_smoothness(smoothed)
        if not torch.isfinite(total):
            return per_image.detach(), None
        return per_image.detach(), list(torch.autograd.grad(total, variables, allow_unused=True))

    @torch.no_grad()
    def render_now() -> torch.Tensor:
        return (final_fn or image_fn)().detach().float().clamp(0, 1).cpu()

    def on_iteration(i: int, per_image: torch.Tensor):
        return callback(i, per_image, render_now)

    start = time.perf_counter()
    result = run_optimization(
        params,
        closure,
        iterations=iterations,
        lr=lr,
        num_images=len(features),
        schedule=lr_schedule,
        progress=progress,
        desc=desc,
        callback=None if callback is None else on_iteration,
        early_stop=early_stop,
    )
    with torch.no_grad():
        images = (final_fn or image_fn)().detach().float().clamp(0, 1).cpu()
    info = {
        "skipped_steps": result.skipped_steps,
        "best_loss": result.best_loss.tolist(),
        "optimize_seconds": time.perf_counter() - start,
    }
    return images, result.history, info
