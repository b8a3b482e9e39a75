"""What a named target is, read from its architecture alone (the ``meta`` device: no weights, no memory)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .network import TargetNetwork

__all__ = ["Architecture", "architecture", "module_bytes"]


@dataclass(frozen=True)
class Architecture:
    """What a named target is, read from its architecture alone (built on the ``meta`` device: no weights read,
    no memory taken).

    Attributes:
        name: the target's name.
        layers: its module names, in order (those that can serve as feature layers).
        weight_bytes: its parameters and buffers, in bytes (float32).
        input_size: ``(H, W)`` when the network takes only that size (a ViT's patch grid), else ``None``.
        default_layer: the layer :meth:`TargetNetwork.from_name` picks when none is named.
    """

    name: str
    layers: tuple[str, ...]
    weight_bytes: int
    input_size: tuple[int, int] | None
    default_layer: str


@functools.lru_cache(maxsize=64)
def architecture(name: str) -> Architecture:
    """The :class:`Architecture` of a named target (as :meth:`TargetNetwork.from_name`), cached.

    Raises:
        ValueError: ``name`` is neither a built-in target nor a timm model name.
    """
    with torch.device("meta"):
        target = TargetNetwork.from_name(name, weights=None, input_size=None)
    return Architecture(
        name, tuple(target.layer_names()), module_bytes(target.model), target.fixed_input_size, target.layers[-1]
    )


def module_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (what holding it costs)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
