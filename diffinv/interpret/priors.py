"""The image priors of feature visualization, each one unit: how it renders images and what it needs.

A prior makes ``(params, image_fn)`` (:mod:`diffinv.interpret.param`): the tensors to optimize and a
function that renders ``(N, 3, H, W)`` images in [0, 1] from them (``train=True``: with training-time
randomness). :func:`~diffinv.interpret.visualize` and ``diffinv visualize`` read :data:`PRIORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..inverters.dip import DIPConfig
from .param import diffusion_image, dip_image, fourier_image, pixel_image

__all__ = ["PRIORS", "Prior"]


@dataclass(frozen=True)
class Prior:
    """One image prior.

    Attributes:
        name: its name (``--method``).
        learning_rate: Adam's default step size on its parameters.
        needs_pipeline: it renders through a loaded :class:`~diffinv.pipelines.DiffInvPipeline` (``--model``).
        takes_param: it has the ``param`` choice (``"fourier"``/``"pixel"``), recorded in the settings.
        size_multiple: the image sides must be multiples of it (the command line checks ``--size`` first).
        make: ``(n, size, *, generator, device, param, dip_channels, pipeline, prompt, num_inference_steps)
            -> (params, image_fn)``; raises ``ValueError`` for a size it cannot make.
    """

    name: str
    learning_rate: float
    make: Callable
    needs_pipeline: bool = False
    takes_param: bool = False
    size_multiple: int = 1


def _pixel(n, size, *, generator, device, param, **_):
    return (fourier_image if param == "fourier" else pixel_image)(n, size, generator=generator, device=device)


def _dip(n, size, *, generator, device, dip_channels, **_):
    return dip_image(n, size, channels=dip_channels, generator=generator, device=device)


def _diffusion(n, size, *, generator, pipeline, prompt, num_inference_steps, **_):
    return diffusion_image(
        pipeline, n, size, prompt=prompt, num_inference_steps=num_inference_steps, generator=generator
    )


PRIORS: dict[str, Prior] = {
    prior.name: prior
    for prior in (
        Prior("pixel", 0.05, _pixel, takes_param=True),
        Prior("dip", 0.01, _dip, size_multiple=2 ** len(DIPConfig.channels)),  # the default generator's levels
        Prior("diffusion", 0.05, _diffusion, needs_pipeline=True),
    )
}
