"""Dynamic loss scaling for fp16 networks, with ``torch.amp.GradScaler``'s semantics.

``GradScaler`` itself does not fit the pipeline's loop: it unscales the ``.grad`` of an
optimizer's parameters and steps that optimizer, while the one optimization rule
(:func:`diffinv.optimization.run_optimization`) owns the optimizer and takes the gradients
from a closure, which retries an overflowed iteration at a smaller scale. :class:`LossScaler`
keeps GradScaler's rules for gradients returned as tensors: scale the loss, unscale the
gradients and report an inf/NaN, back off on one, grow after a run of good steps.

Example:
    >>> scaler = LossScaler(enabled=unet.dtype == torch.float16)
    >>> grads = torch.autograd.grad(loss * scaler.scale, variables)
    >>> grads, found_inf = scaler.unscale(grads)
    >>> scaler.update(found_inf)        # found_inf: the step is skipped and the scale halved
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffinv.optimization import all_finite

__all__ = ["LossScaler"]


class LossScaler:
    """GradScaler's dynamic loss scale, for gradients computed by ``torch.autograd.grad``.

    Args:
        enabled: scale at all (fp16 networks); disabled, the scale is 1 and never changes.
        init_scale: the first scale (GradScaler's default, 2**16).
        growth_factor: the scale is multiplied by it after ``growth_interval`` good steps in a row.
        backoff_factor: the scale is multiplied by it after a step whose gradient was not finite.
        growth_interval: good steps in a row before the scale grows (GradScaler: 2000; the
            pipeline's few hundred iterations need a shorter one).
        min_scale, max_scale: the scale stays within these bounds (GradScaler has none; a scale
            below 1 only loses precision, and above 2**24 fp16 gradients overflow at once).
    """

    def __init__(
        self,
        enabled: bool = True,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 100,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
    ):
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.min_scale, self.max_scale = min_scale, max_scale
        self._growth_tracker = 0

    def unscale(self, grads: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """The gradients of the scaled loss divided by the scale, and whether any is not finite."""
        grads = [g / self.scale for g in grads]
        return grads, not all_finite(grads)

    def update(self, found_inf: bool) -> None:
        """Backs off after a non-finite gradient, grows after ``growth_interval`` finite ones in a row."""
        if not self.enabled:
            return
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            self.scale = min(self.scale * self.growth_factor, self.max_scale)
            self._growth_tracker = 0
