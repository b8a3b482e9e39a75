"""Feature visualization (activation maximization) with any of diffinv's image priors.

The image is rendered by a parameterization (:mod:`diffinv.interpret.param`): ``pixel`` (lucid's
decorrelated Fourier/colour space by default, or plain pixel logits), ``dip`` (the Deep Image
Prior generator) or ``diffusion`` (the initial latent of a Stable Diffusion sampler). It is
randomly transformed (:mod:`diffinv.interpret.transforms`), fed to the target, and the
*negative* objective is minimized under the one optimization rule of
:func:`diffinv.optimization.run_optimization` (cosine schedule, best iterate per image,
non-finite steps skipped).

Example:
    >>> target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.4", input_size=(128, 128))
    >>> out = visualize(target, channel("blocks.4", [3, 17, 42]), 3, size=(128, 128), method="pixel")
    >>> out.images.shape, out.values
    (torch.Size([3, 3, 128, 128]), tensor([...]))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..losses import total_variation
from ..optimization import check_weight, run_optimization
from ..targets import TargetNetwork
from .objectives import Objective, check_feature_map
from .priors import PRIORS
from .transforms import Transform, standard_transforms

__all__ = ["DEFAULT_LEARNING_RATES", "METHODS", "VisualizationOutput", "check_layer", "visualize"]

METHODS = tuple(PRIORS)
DEFAULT_LEARNING_RATES = {name: prior.learning_rate for name, prior in PRIORS.items()}


@dataclass
class VisualizationOutput:
    """What :func:`visualize` returns.

    Attributes:
        images: ``(N, 3, H, W)`` in [0, 1] (CPU), rendered without training-time randomness.
        values: ``(N,)`` the objective of ``images`` as they are (no transforms).
        history: ``(iterations, N)`` the objective at each iteration (of the transformed images).
        seconds: wall time of the optimization.
        method: ``pixel``, ``dip`` or ``diffusion``.
        info: settings and skipped steps.
    """

    images: torch.Tensor
    values: torch.Tensor
    history: torch.Tensor
    seconds: float
    method: str
    info: dict = field(default_factory=dict)


def check_layer(target: TargetNetwork, layer: str, size: tuple[int, int] = (64, 64)) -> int:
    """The channel count of ``layer``; a ValueError when it is not a module or not a 4-D feature map."""
    if layer not in target.layer_names():
        raise ValueError(
            f"`layer` {layer!r} is not a module of {target.name!r}. Some valid layers: "
            f"{', '.join(target.layer_names()[:30])} ..."
        )
    param = next(target.model.parameters(), None)
    x = torch.full((1, 3, *size), 0.5, device=target.mean.device, dtype=param.dtype if param is not None else None)
    with torch.no_grad():
        out = target.forward(x, layers=[layer])[layer]
    return check_feature_map(out, layer).shape[1]


def visualize(
    target: TargetNetwork,
    objective: Objective,
    num_images: int = 1,
    *,
    size: tuple[int, int] = (128, 128),
    method: str = "pixel",
    param: str = "fourier",
    iterations: int = 256,
    learning_rate: float | None = None,
    transforms: Transform | str | None = "standard",
    tv_weight: float = 0.0,
    dip_channels: tuple[int, ...] = (16, 32, 32, 64),
    pipeline=None,
    prompt: str | list[str] = "",
    num_inference_steps: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> VisualizationOutput:
    """Makes ``num_images`` images that maximize ``objective`` (one value per image).

    Args:
        target: the network (its layers need not include the objective's).
        objective: what to maximize (:mod:`diffinv.interpret.objectives`); ``channel(layer, [c0, c1, ...])``
            gives each image its own channel.
        num_images: N.
        size: ``(H, W)`` of the images.
        method: the image prior: ``pixel``, ``dip`` or ``diffusion``.
        param: for ``pixel``: ``"fourier"`` (decorrelated Fourier/colour space, the default) or ``"pixel"``.
        iterations: optimization steps.
        learning_rate: Adam's step size (default per method: :data:`DEFAULT_LEARNING_RATES`).
        transforms: ``"standard"`` (lucent's, scaled to ``size``), a transform, or ``None``.
        tv_weight: weight of a total-variation penalty on the images (0: none).
        dip_channels: channels per level of the DIP generator.
        pipeline: for ``diffusion``: a loaded :class:`~diffinv.pipelines.DiffInvPipeline`.
        prompt, num_inference_steps: for ``diffusion``: text prompt and sampler steps K.
        generator: seeds the start and the transforms.
        progress: show a progress bar.

    Raises:
        ValueError: an unknown method or parameterization, a layer that is not a feature map,
            a channel index out of range (naming the layer's channel count).
    """
    # 1. Check inputs
    if method not in METHODS:
        raise ValueError(f"`method` {method!r} is not one of {', '.join(METHODS)}.")
    if param not in ("fourier", "pixel"):
        raise ValueError(f"`param` must be 'fourier' or 'pixel', got {param!r}.")
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"`num_images` must be a positive integer, got {num_images!r}.")
    prior = PRIORS[method]
    if prior.needs_pipeline and pipeline is None:
        raise ValueError(
            f"`method={method!r}` needs `pipeline=` a loaded DiffInvPipeline (e.g. `load_pipeline(path)`)."
        )
    lr = check_weight("learning_rate", prior.learning_rate if learning_rate is None else learning_rate, positive=True)
    check_weight("tv_weight", tv_weight)
    for layer in objective.layers:
        check_layer(target, layer)
    size = (int(size[0]), int(size[1]))
    device = target.mean.device
    if transforms == "standard":
        transforms = standard_transforms(min(size))
    elif isinstance(transforms, str):
        raise ValueError(f"`transforms` must be 'standard', a transform or None, got {transforms!r}.")
    # the transforms draw from their own CPU generator, seeded from `generator`, so the start is not shifted
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
    t_generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # 2. The parameterization
    params, image_fn = prior.make(
        num_images,
        size,
        generator=generator,
        device=device,
        param=param,
        dip_channels=dip_channels,
        pipeline=pipeline,
        prompt=prompt,
        num_inference_steps=num_inference_steps,
    )
    params = [p.requires_grad_(True) for p in params]
    dtype = next(target.model.parameters()).dtype

    def values_of(images: torch.Tensor) -> torch.Tensor:
        return objective(target.forward(images.to(device, dtype), layers=list(objective.layers))).float()

    # 3. The closure (loss and gradient): minimize -objective (+ TV)
    @torch.enable_grad()
    def closure(variables):
        images = image_fn(train=True)
        seen = transforms(images, t_generator) if transforms is not None else images
        per_image = -values_of(seen)
        if tv_weight > 0:
            per_image = per_image + tv_weight * total_variation(images)
        total = per_image.sum()
        if not torch.isfinite(total):
            return per_image.detach(), None
        return per_image.detach(), list(torch.autograd.grad(total, variables, allow_unused=True))

    # 4. The loop: the one optimization rule
    start = time.perf_counter()
    result = run_optimization(
        params,
        closure,
        iterations=iterations,
        lr=lr,
        num_images=num_images,
        progress=progress,
        desc=f"visualize {method}",
    )
    seconds = time.perf_counter() - start

    # 5. Render the best iterates and score them as they are
    with torch.no_grad():
        images = image_fn(train=False).detach().float().clamp(0, 1)
        values = values_of(images).cpu()
    info = {
        "objective": objective.name,
        "param": param if prior.takes_param else method,
        "iterations": iterations,
        "learning_rate": lr,
        "transforms": transforms is not None,
        "tv_weight": tv_weight,
        "skipped_steps": result.skipped_steps,
        "size": list(size),
    }
    return VisualizationOutput(images.cpu(), values, -result.history, seconds, method, info)
