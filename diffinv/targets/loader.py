"""The target-loader unit: :class:`TargetLoader`, what each kind of target network declares about itself."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TargetLoader"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TargetLoader:
    """One kind of target network, a self-describing unit: the names it accepts, how it builds them offline
    (pretrained weights from a local cache or package only, a state-dict file, or random weights), their
    normalization, and their default and atlas layers.

    The built-in units are :data:`BUILTIN_LOADERS`; a package adds one through an entry point of group
    ``diffinv.targets`` naming a subclass (or an instance)::

        [project.entry-points."diffinv.targets"]
        mynet = "mypackage:MyNetLoader"

    :func:`target_loader` asks the built-in units by name first, then the plugins, then timm (any timm model
    name). Nothing outside a unit branches on the names it accepts.

    Attributes:
        kind: what the unit loads, for messages (``"torchvision"``, ``"timm"``, ...).
        names: the names it accepts and lists (:func:`available_targets`).
        mean, std: the input normalization of its networks (:meth:`normalization` may read it from the model).
        default_layers: name -> feature layers, shallow to deep (the demo, bench and audit use them; the last is
            :meth:`TargetNetwork.from_name`'s default layer).
        atlas_layers: name -> every depth, stem to head (the leakage atlas).
        installed_order: where its :meth:`installed` names come in :func:`installed_targets` (lower first).
    """

    kind: str = ""
    names: tuple[str, ...] = ()
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_layers: dict[str, tuple[str, ...]] = {}
    atlas_layers: dict[str, tuple[str, ...]] = {}
    installed_order: int = 50

    def accepts(self, name: str) -> bool:
        """Whether this unit builds the target ``name``."""
        return name in self.names

    def listed(self) -> list[str]:
        """The names :func:`available_targets` shows for this unit."""
        return list(self.names)

    def installed(self) -> list[str]:
        """Its names whose pretrained weights are on this machine (found without loading them)."""
        return []

    def load(self, name: str, weights: str | os.PathLike | None) -> nn.Module:
        """The network ``name``: random weights (``None``), its pretrained ones (``"default"``, offline only), or a
        state-dict file (:func:`load_state_dict_into`). Raises :class:`WeightsNotFoundError` with how to provide
        pretrained weights offline."""
        raise NotImplementedError(f"target loader {type(self).__name__} ({self.kind}) does not implement `load`.")

    def normalization(self, name: str, model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
        """``(mean, std)`` of ``model``'s input."""
        return self.mean, self.std
