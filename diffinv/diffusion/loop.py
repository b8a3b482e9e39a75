"""The optimization loop's parts of the pipeline call, around :func:`diffinv.optimization.run_optimization` (the one
rule: cosine schedule, best iterate per image, non-finite steps skipped): the closure (:class:`GradientClosure`,
with the fp16 loss-scale retries), the step hook (:func:`step_end_hook`) and the check of the reconstruction."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils import logging

from diffinv.optimization import OptimizationResult
from diffinv.pipelines.loss_scaling import LossScaler

__all__ = ["GradientClosure", "check_reconstruction", "step_end_hook"]

logger = logging.get_logger(__name__)


class GradientClosure:
    """``closure(variables) -> (per-image loss, gradients or None)``: one gradient step at ``variables``.

    With fp16 networks (an enabled ``scaler``) an iteration whose gradient overflowed is retried at a halved loss
    scale, at most ``max_retries`` times, before it is skipped (:class:`~diffinv.pipelines.LossScaler`).

    Args:
        gradient_step: ``gradient_step(variables, **objective, loss_scale=..., redone=...)``, the pipeline's
            :meth:`~diffinv.pipelines.DiffInvPipeline._gradient_step`.
        objective: its keyword arguments (features, target, sampler, loss, ...).
        num_images: N, the images of the batch.
        max_retries: the retries of an iteration whose gradient overflowed.
        scaler: the loss scale.

    Attributes:
        fp32_decodes: ``(N,)`` per image, the iterations whose decode was redone in fp32.
    """

    def __init__(
        self, gradient_step: Callable, objective: dict, num_images: int, max_retries: int, scaler: LossScaler
    ):
        self.gradient_step, self.objective, self.max_retries, self.scaler = (
            gradient_step, objective, max_retries, scaler,
        )  # fmt: skip
        self.num_images = num_images
        self.iteration = 0
        self.fp32_decodes = torch.zeros(num_images, dtype=torch.long)

    def __call__(self, variables: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        redone = torch.zeros(self.num_images, dtype=torch.bool)  # this iteration's images decoded again in fp32
        for _attempt in range(self.max_retries + 1):
            scale = self.scaler.scale
            per_image, grads = self.gradient_step(variables, **self.objective, loss_scale=scale, redone=redone)
            if grads is None:
                break  # the loss itself is not finite: no loss scale helps
            grads, found_inf = self.scaler.unscale(grads)
            self.scaler.update(found_inf)
            if not found_inf or scale <= 1.0:
                break  # retrying only helps a gradient that overflowed at a large loss scale
        if grads is None or found_inf:
            logger.warning(f"iteration {self.iteration}: non-finite loss or gradient; step skipped.")
        self.fp32_decodes.add_(redone.long())
        self.iteration += 1
        return per_image, grads


def step_end_hook(
    pipe,
    variables: list[torch.Tensor],
    prompt_embeds: torch.Tensor,
    scheduler,
    callback_on_step_end: Callable | None,
    tensor_inputs: list[str],
) -> Callable[[int, torch.Tensor], bool]:
    """The loop's ``callback(iteration, per_image_loss) -> stop``: calls ``callback_on_step_end(pipe, iteration,
    timestep, callback_kwargs)`` (diffusers' step hook, with the ``tensor_inputs`` of ``latents``, ``loss``,
    ``prompt_embeds``); returning ``{"latents": ...}`` replaces the latents, ``{"interrupt": True}`` stops."""

    def on_step_end(i: int, per_image: torch.Tensor) -> bool:
        if callback_on_step_end is not None:
            available = {"latents": variables[0], "loss": per_image, "prompt_embeds": prompt_embeds}
            callback_kwargs = {k: available[k] for k in tensor_inputs}
            callback_outputs = callback_on_step_end(pipe, i, scheduler.timesteps[0], callback_kwargs) or {}
            if "latents" in callback_outputs:
                variables[0].copy_(callback_outputs["latents"])
            return bool(callback_outputs.get("interrupt", False))
        return False

    return on_step_end


def check_reconstruction(images: torch.Tensor, dtype: torch.dtype, optimized: OptimizationResult) -> None:
    """Raises a FloatingPointError when the rendered reconstruction is not finite (every step of an image failed)."""
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            f"the reconstruction is not finite in {dtype}: every step of some images failed "
            f"({optimized.skipped_steps} of {len(optimized.history)} iterations skipped). Run the networks in "
            f"bfloat16 or float32."
        )
