"""What every inverter shares: the result type and the optimization loop.

An optimizing inverter is a *parameterization* — ``(params, image_fn)``, as in lucent:
the tensors to optimize and a function that renders images in [0, 1] from them — plus
the target network and its features. :func:`optimize` runs the loop: feature loss +
priors (+ temporal smoothing over consecutive frames), Adam, a progress bar, and a
guard that never lets a non-finite loss or gradient reach the parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..features import FeatureSet, check_features
from ..losses import feature_loss, temporal_smoothness
from ..targets import TargetNetwork

__all__ = ["InversionOutput", "Inverter", "optimize", "resolve_features"]


@dataclass
class InversionOutput:
    """The result of any inverter.

    Attributes:
        images: ``(N, 3, H, W)`` reconstructions in [0, 1] (CPU, float32).
        loss_history: ``(iterations, N)`` per-image total loss at each iteration.
        feature_residual: ``(N,)`` ``||f(x_hat) - f|| / ||f||`` of the returned images.
        seconds: wall time of the whole inversion.
        method: the inverter's name.
        info: anything else worth keeping (skipped steps, hyper-parameters, ...).
    """

    images: torch.Tensor
    loss_history: torch.Tensor
    feature_residual: torch.Tensor
    seconds: float
    method: str
    info: dict = field(default_factory=dict)


class Inverter:
    """Base class: ``inverter(features, image_size) -> InversionOutput``.

    Subclasses set :attr:`name` and implement :meth:`invert`.
    """

    name = "inverter"
    white_box = True

    def __init__(self, target: TargetNetwork):
        self.target = target

    def invert(
        self,
        features: torch.Tensor | FeatureSet,
        image_size: tuple[int, int] | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> InversionOutput:
        raise NotImplementedError

    def __call__(self, *args, **kwargs) -> InversionOutput:
        return self.invert(*args, **kwargs)


def resolve_features(
    target: TargetNetwork,
    features: torch.Tensor | FeatureSet,
    image_size: tuple[int, int] | None,
    layer: str | None = None,
) -> tuple[torch.Tensor, str, tuple[int, int]]:
    """Validates ``features`` against ``target`` and returns ``(tensor, layer, image_size)``.

    A FeatureSet carries its layer and input size; a plain tensor uses ``layer`` (or the
    target's single layer) and ``image_size`` (or the target's input size).
    """
    if isinstance(features, FeatureSet):
        layer = features.layer
        image_size = image_size or features.input_size
        tensor = features.features
    else:
        layer = layer or target.layer
        image_size = image_size or target.input_size
        tensor = features
        if image_size is None:
            raise ValueError("`image_size` is required when `features` is a tensor and the target has no input size.")
    image_size = tuple(int(v) for v in image_size)
    check_features(tensor, target.feature_shape(layer, image_size))
    return tensor, layer, image_size


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
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Minimizes ``feature_loss(target(image_fn()), features) + prior_fn(images)``.

    Args:
        params: tensors to optimize (``requires_grad`` is set here).
        image_fn: renders ``(N, 3, H, W)`` images in [0, 1] from ``params``.
        prior_fn: per-image prior on the images, already weighted, ``(N,)``.
        temporal_weight, temporal_fn: adds ``temporal_weight * temporal_smoothness(temporal_fn())``
            — the frames of a video inverted as one batch.
        temporal_anchor: a fixed ``(1, ...)`` tensor in the space of ``temporal_fn()`` (e.g. the
            previous window's last frame), put in front of it in the temporal term.
        lr_schedule: cosine-anneal the learning rate to 0 over ``iterations``.
        final_fn: renders the returned images (default ``image_fn``); use it to drop
            training-time randomness such as jitter.

    Returns:
        ``(images, loss_history (iterations, N), info)`` with the images rendered from the
        best parameters seen (lowest total loss), detached, on CPU.
    """
    if iterations < 1:
        raise ValueError(f"`iterations` must be at least 1, got {iterations}.")
    params = [p.requires_grad_(True) for p in params]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations) if lr_schedule else None
    features = features.to(next(iter(params)).device).float()
    history, skipped = [], 0
    best_loss, best_state = float("inf"), None
    start = time.perf_counter()
    bar = tqdm(range(iterations), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        optimizer.zero_grad(set_to_none=True)
        images = image_fn()
        per_image = feature_loss(target.feature(images, layer), features, loss)
        if prior_fn is not None:
            per_image = per_image + prior_fn(images)
        total = per_image.sum()
        if temporal_weight > 0 and temporal_fn is not None:
            variables = temporal_fn()
            if temporal_anchor is not None:
                variables = torch.cat([temporal_anchor.to(variables), variables])
            total = total + temporal_weight * temporal_smoothness(variables)
        if not torch.isfinite(total):
            skipped += 1
            history.append(torch.full_like(per_image, float("nan")).detach().cpu())
            continue
        total.backward()
        if not all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            skipped += 1
            history.append(per_image.detach().cpu())
            continue
        if total.item() < best_loss:
            best_loss = total.item()
            best_state = [p.detach().clone() for p in params]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.append(per_image.detach().cpu())
        bar.set_postfix(loss=f"{total.item():.4g}")
    if best_state is not None:
        with torch.no_grad():
            for p, best in zip(params, best_state):
                p.copy_(best)
    with torch.no_grad():
        images = (final_fn or image_fn)().detach().float().clamp(0, 1).cpu()
    info = {"skipped_steps": skipped, "best_loss": best_loss, "optimize_seconds": time.perf_counter() - start}
    return images, torch.stack(history), info
