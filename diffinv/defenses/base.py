"""One defense family as a unit (:class:`DefenseFamily`) and the small pieces its transforms share.

A family is a transform of the features with one strength; each built-in family is one module of
:mod:`diffinv.defenses` (``noise``, ``quantize``, ``prune``, ``topk``, and the learned ``nopeek``,
``shredder``, ``adversarial``), and installed packages add more through the entry-point group
``diffinv.defenses`` (:mod:`diffinv.defenses.spec`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["DefenseFamily", "non_negative", "per_image", "randn", "untrained"]


def randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (on its device), as ``like``'s dtype and device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like)


def per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` ``(N,)`` shaped to broadcast over ``like`` ``(N, ...)``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def non_negative(v: float) -> bool:
    """A finite strength ``>= 0`` (the learned families' weights)."""
    return 0 <= v < math.inf


def untrained(f, strength, generator, straight_through):
    """The transform of a learned family: it is applied through its deployment, never as a fixed transform."""
    raise ValueError(
        "a learned defense is applied through its Deployment (`Defense.deployment(target, layer, "
        "state)`, after `Defense.train`), not as a fixed transform."
    )


@dataclass(frozen=True)
class DefenseFamily:
    """One defense: a transform of the features with one strength (a unit; plugins add more).

    Attributes:
        name: the spec's name (``noise`` in ``noise:0.1``).
        transform: ``(features (N, ...), strength, generator, straight_through) -> features``.
        accept: whether a strength is valid; ``expected`` says which are (in errors), ``example`` gives one.
        random: a draw depends on the generator.
        integer: the strength is an integer (``quantize``'s bits).
        support: for a family whose zeros survive in what it ships (pruning, top-k): ``observed ->
            (mask, threshold or None)``, the support an attacker reads and applies when the family is the
            last step (a threshold: an entry outside it counts by how much its magnitude exceeds it);
            ``None``: the attacker applies the family with fresh randomness.
        train: for a learned family, ``(target, layer, strength, images, labels, config, progress) ->``
            :class:`~diffinv.defenses.TrainedState` (``config``: a
            :class:`~diffinv.defenses.DefenseTrainConfig`); ``None``: a fixed transform.
        deploy: for a learned family, ``(target, layer, strength, state) -> (client network, transform or None)``:
            the network whose layer ships the features and the transform ``(features, generator,
            straight_through) -> features`` applied to them.
        baseline: the plain reference a learned defense has to beat on the privacy-utility frontier (noise).
    """

    name: str
    transform: Callable
    accept: Callable[[float], bool]
    expected: str
    example: str
    random: bool
    integer: bool = False
    support: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    train: Callable | None = None
    deploy: Callable | None = None
    baseline: bool = False

    @property
    def learned(self) -> bool:
        """Whether the family trains (:attr:`train`) before it can be applied."""
        return self.train is not None
