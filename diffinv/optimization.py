"""The one optimization rule of every optimizing inverter (pixel, dip, diffusion, ...).

* **Schedule**: Adam, its learning rate a cosine from ``lr`` at iteration 0 to 0 at the end (:func:`cosine_lr`).
* **Best iterate per image**: each image keeps the variables of the iteration where its own loss was lowest
  (:class:`BestIterate`; an optimized tensor's first dimension is split into one block per image).
* **Non-finite steps**: an iteration whose loss or gradient is not finite makes no update (``skipped_steps``).
* **Early stopping** (optional, :class:`EarlyStopping`): an image stops at its best iterate when its best loss has
  not improved by a relative ``min_delta`` for ``patience`` iterations.

:func:`run_optimization` is the loop; a method supplies ``closure(variables) -> (per_image_loss, gradients or None)``.

Example:
    >>> result = run_optimization([logits], closure, iterations=300, lr=0.1, num_images=4)
    >>> result.history.shape, result.skipped_steps
    (torch.Size([300, 4]), 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = [
    "BestIterate",
    "EarlyStopping",
    "OptimizationResult",
    "adam",
    "all_finite",
    "check_weight",
    "cosine_lr",
    "run_optimization",
]

ClosureFn = Callable[[list[torch.Tensor]], tuple[torch.Tensor, "list[torch.Tensor] | None"]]


def check_weight(name: str, value: float, *, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 with ``positive``) for a loss weight or step size, else a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"`{name}` must be a finite number {'>' if positive else '>='} 0, got {value!r}.")
    return float(value)


def adam(variables: Sequence[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam over ``variables``: the fused kernel where torch has it for their device (one kernel
    for all tensors instead of a dozen small ops per tensor: 0.6 ms instead of 3 ms a step for
    the 66 tensors of the demo's DIP generators on CPU), else the default implementation."""
    devices = {v.device.type for v in variables}
    if devices <= {"cpu", "cuda"} and all(v.is_floating_point() for v in variables):
        try:
            return torch.optim.Adam(variables, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # torch without a fused Adam for this device
            pass
    return torch.optim.Adam(variables, lr=lr)


def all_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """Whether every element of every tensor (``None`` skipped) is finite.

    One fused norm over all tensors answers it in the common case (a finite total norm means
    every element is finite); only a non-finite norm, which can also be an overflow of finite
    values, is checked tensor by tensor.
    """
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return True
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None and bool(torch.isfinite(get_total_norm(tensors))):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def cosine_lr(lr: float, iteration: int, iterations: int) -> float:
    """The learning rate of ``iteration`` (0-based): ``lr`` at 0, annealed to 0 by a cosine."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * iteration / iterations))


class BestIterate:
    """Keeps, per image, the variables at the iteration with that image's lowest loss.

    Args:
        variables: the optimized tensors; the first dimension of each is ``num_images``
            contiguous blocks, block ``i`` belonging to image ``i``.
        num_images: N.

    Raises:
        ValueError: a tensor's first dimension is not a multiple of ``num_images``.
    """

    def __init__(self, variables: Sequence[torch.Tensor], num_images: int):
        for v in variables:
            if v.ndim == 0 or v.shape[0] % num_images:
                raise ValueError(
                    f"an optimized tensor of shape {tuple(v.shape)} cannot be split into {num_images} per-image blocks "
                    f"along its first dimension."
                )
        self.num_images = num_images
        self.loss = torch.full((num_images,), float("inf"))
        self.values = [v.detach().clone() for v in variables]

    def _blocks(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unflatten(0, (self.num_images, -1))  # a view in any memory format (channels_last too)

    @torch.no_grad()
    def update(
        self, per_image: torch.Tensor, variables: Sequence[torch.Tensor], active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Keeps the current variables of every image whose finite loss improved (among the ``active``
        ones, a boolean ``(N,)`` mask; default all); returns that mask."""
        per_image = per_image.detach().float().cpu()
        improved = torch.isfinite(per_image) & (per_image < self.loss)
        if active is not None:
            improved &= active
        if improved.all():  # the common case while the loss falls: one plain copy per tensor
            self.loss = per_image.clone()
            for kept, current in zip(self.values, variables):
                kept.copy_(current.detach())
        elif improved.any():
            self.loss = torch.where(improved, per_image, self.loss)
            for kept, current in zip(self.values, variables):
                mask = improved.to(kept.device)
                self._blocks(kept)[mask] = self._blocks(current.detach())[mask]
        return improved

    @torch.no_grad()
    def restore(self, variables: Sequence[torch.Tensor], images: torch.Tensor | None = None) -> None:
        """Copies the kept values into ``variables`` (images never improved keep their start); with
        ``images`` (a boolean ``(N,)`` mask) only those images' blocks."""
        for variable, kept in zip(variables, self.values):
            if images is None:
                variable.copy_(kept)
            else:
                mask = images.to(kept.device)
                self._blocks(variable)[mask] = self._blocks(kept)[mask]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop an image when its best loss has stopped improving.

    An image *improves* at an iteration whose finite loss is below ``(1 - min_delta)`` times the
    loss of its last improvement; after ``patience`` iterations without one it stops (its
    variables stay at its best iterate). The loop ends when every image has stopped.

    Args:
        patience: iterations without improvement before an image stops (>= 1).
        min_delta: the relative improvement that counts, in [0, 1) (0: any decrease).

    Example:
        >>> run_optimization(variables, step, iterations=300, lr=0.1, num_images=4,
        ...                  early_stop=EarlyStopping(patience=30, min_delta=0.01))
    """

    patience: int
    min_delta: float = 0.0

    def __post_init__(self):
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 1:
            raise ValueError(f"`patience` must be a positive integer (iterations), got {self.patience!r}.")
        if not (isinstance(self.min_delta, (int, float)) and 0 <= self.min_delta < 1):
            raise ValueError(f"`min_delta` must be a relative improvement in [0, 1), got {self.min_delta!r}.")

    def settings(self) -> dict:
        """What defines its results, for run manifests."""
        return {"patience": self.patience, "min_delta": float(self.min_delta)}


class _Plateau:
    """Per image: the loss of its last improvement, iterations since, and whether it still runs."""

    def __init__(self, rule: EarlyStopping, num_images: int):
        self.rule = rule
        self.reference = torch.full((num_images,), float("inf"))
        self.waiting = torch.zeros(num_images, dtype=torch.long)
        self.active = torch.ones(num_images, dtype=torch.bool)
        self.stopped_at = torch.full((num_images,), -1, dtype=torch.long)

    def update(self, iteration: int, per_image: torch.Tensor) -> None:
        per_image = per_image.detach().float().cpu()
        improved = torch.isfinite(per_image) & (per_image < self.reference * (1 - self.rule.min_delta))
        self.reference = torch.where(improved & self.active, per_image, self.reference)
        self.waiting = torch.where(improved, 0, self.waiting + 1)
        stop = self.active & (self.waiting >= self.rule.patience)
        self.stopped_at[stop] = iteration + 1
        self.active &= ~stop


@dataclass
class OptimizationResult:
    """What :func:`run_optimization` leaves besides the restored variables.

    Attributes:
        history: ``(iterations run, N)`` per-image loss at each iteration (non-finite where it was).
        skipped_steps: iterations that made no update (non-finite loss or gradient).
        best_loss: ``(N,)`` the lowest finite loss of each image (inf if none).
        iterations: ``(N,)`` the iterations each image ran (fewer than asked where it stopped early).
    """

    history: torch.Tensor
    skipped_steps: int
    best_loss: torch.Tensor
    iterations: torch.Tensor | None = None


def run_optimization(
    variables: Sequence[torch.Tensor],
    closure: ClosureFn,
    *,
    iterations: int,
    lr: float,
    num_images: int,
    schedule: bool = True,
    progress: bool | object = True,
    desc: str = "invert",
    callback: Callable[[int, torch.Tensor], bool | None] | None = None,
    early_stop: EarlyStopping | None = None,
) -> OptimizationResult:
    """Optimizes ``variables`` in place under the one rule, then restores each image's best iterate.

    Args:
        variables: leaf tensors to optimize (their ``.grad`` is set from ``closure``'s gradients).
        closure: ``closure(variables) -> (per_image_loss (N,), gradients or None)``: the loss and its
            gradient at the current variables; ``None`` means the loss was not finite (no gradient
            was computed).
        iterations: optimization iterations (>= 1).
        lr: Adam's initial learning rate.
        num_images: N, the images the variables hold (see :class:`BestIterate`).
        schedule: cosine-anneal the learning rate to 0 (:func:`cosine_lr`); else constant.
        progress: show a tqdm bar (``True``/``False``), or an object with ``update()`` and
            ``set_postfix(refresh=False)`` to report to (e.g. a diffusers progress bar).
        callback: ``callback(iteration, per_image_loss)`` after each iteration; returning ``True``
            stops the loop.
        early_stop: stop images whose loss has stopped improving (:class:`EarlyStopping`); ``None``:
            every image runs all ``iterations``.

    Returns:
        :class:`OptimizationResult`.
    """
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"`iterations` must be a positive integer, got {iterations!r}.")
    check_weight("learning_rate", lr)
    variables = list(variables)
    optimizer = adam(variables, lr)
    best = BestIterate(variables, num_images)
    history, skipped = [], 0
    plateau = _Plateau(early_stop, num_images) if early_stop is not None else None
    active = None if plateau is None else plateau.active
    bar = (
        progress
        if not isinstance(progress, bool)
        else tqdm(total=iterations, desc=desc, disable=not progress, leave=False)
    )
    try:
        for i in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, i, iterations) if schedule else lr
            per_image, grads = closure(variables)
            history.append(per_image.detach().float().cpu())
            finite = grads is not None and bool(torch.isfinite(per_image).all()) and all_finite(grads)
            if not finite and plateau is not None and grads is not None and not active.all():
                # a stopped image (its variables frozen) does not make the running ones skip a step
                finite = bool(torch.isfinite(per_image.detach().cpu()[active]).all())
                finite = finite and all_finite(
                    [g.unflatten(0, (num_images, -1))[active.to(g.device)] for g in grads if g is not None]
                )
                if finite:
                    grads = [
                        None if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads
                    ]
            if finite:
                best.update(per_image, variables, active)
                for variable, grad in zip(variables, grads):
                    variable.grad = grad
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if active is not None and not active.all():
                    best.restore(variables, ~active)  # stopped images stay at their best iterate
            else:
                skipped += 1
            bar.update(1)
            bar.set_postfix(loss=f"{per_image.float().mean().item():.4g}", refresh=False)  # drawn at tqdm's pace
            if callback is not None and callback(i, per_image):
                break
            if plateau is not None:
                plateau.update(i, per_image)
                active = plateau.active
                if not active.any():
                    break
    finally:
        if isinstance(progress, bool):
            bar.close()
    best.restore(variables)
    ran = torch.full((num_images,), len(history), dtype=torch.long)
    if plateau is not None:
        ran = torch.where(plateau.stopped_at >= 0, plateau.stopped_at, ran)
    return OptimizationResult(torch.stack(history), skipped, best.loss, ran)
