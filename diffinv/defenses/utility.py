"""The utility of a deployment: does the network still work from the (defended) features of its split layer?

:func:`utility_agreement` and :func:`utility_scores` run the rest of the network from the features of a
layer (:meth:`TargetNetwork.split_logits <diffinv.targets.TargetNetwork.split_logits>`), after checking that
the split is real.
"""

from __future__ import annotations

import math

import torch

from ..targets import SplitUnavailable, TargetNetwork
from .spec import Deployment

__all__ = ["UtilityUnavailable", "utility_agreement", "utility_scores"]

UtilityUnavailable = SplitUnavailable  # the deployment's name for it: its utility cannot be measured at this layer


@torch.no_grad()
def utility_agreement(
    target: TargetNetwork, images: torch.Tensor, layer: str, clean: torch.Tensor, defended: torch.Tensor
) -> torch.Tensor:
    """Per image, 1.0 where the network run from the ``defended`` features of ``layer`` predicts the
    class it predicts from the images (the deployment still works), else 0.0.

    First checks that the split is real (:meth:`TargetNetwork.check_split
    <diffinv.targets.TargetNetwork.check_split>`): nothing but ``layer``'s output may reach the
    classifier (no skip connection around the layer, no second use of it). The network runs from
    the features by :meth:`TargetNetwork.split_logits <diffinv.targets.TargetNetwork.split_logits>`.

    Args:
        clean: the layer's own features of ``images`` (``target.feature(images, layer)``).

    Raises:
        UtilityUnavailable: the network cannot be run from ``layer`` (the message says why).
    """
    target.check_split(layer, images, clean.to(images.device))
    reference = target.logits(images).float()
    defended_logits = target.split_logits(layer, defended.to(images.device), images)
    return (defended_logits.argmax(dim=1) == reference.argmax(dim=1)).float().cpu()


@torch.no_grad()
def utility_scores(
    deployment: Deployment,
    images: torch.Tensor,
    layer: str,
    reference: TargetNetwork,
    defended: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per image, the deployment's ``agreement`` with the undefended ``reference`` network (1.0 where the defended
    deployment predicts the class the reference predicts from the images) and, with ``labels`` (``-1``: unknown,
    ``NaN``), its top-1 ``accuracy``. The rest of the network runs from the ``defended`` features of ``layer`` with
    the deployment's own network (a fine-tuned client's head is its own), after its split is checked.

    Raises:
        UtilityUnavailable: the network cannot be run from ``layer``.
    """
    client = deployment.target
    client.check_split(layer, images, client.feature(images, layer))
    predicted = client.split_logits(layer, defended.to(images.device), images).float().argmax(dim=1).cpu()
    out = {"agreement": (predicted == reference.logits(images).float().argmax(dim=1).cpu()).float()}
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        out["accuracy"] = torch.where(labels >= 0, (predicted == labels).float(), torch.tensor(math.nan))
    return out
