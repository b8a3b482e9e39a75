"""Composable objectives for feature visualization (as in lucid/lucent).

An :class:`Objective` maps the features of a batch of images (``{layer: (N, C, H, W)}``) to
one value per image, ``(N,)``, to be *maximized*. Objectives add, subtract, negate and scale
with ordinary arithmetic, and name the layers they read, so one forward pass serves them all.

Example:
    >>> obj = channel("blocks.4", 17) - 0.5 * channel("blocks.4", 3) + 0.1 * layer_norm("blocks.2")
    >>> obj.layers
    ('blocks.4', 'blocks.2')
    >>> values = obj(target.forward(images, layers=obj.layers))   # (N,)

``channel`` and ``neuron`` take one index, or one index *per image* (a list of N), so N
channels are visualized as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = ["Objective", "channel", "check_channels", "check_feature_map", "layer_norm", "neuron"]

Indices = int | Sequence[int]


def check_feature_map(features, layer: str) -> torch.Tensor:
    """``features`` if it is a ``(N, C, H, W)`` tensor, else a ValueError that says what the layer gives."""
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        got = (
            f"a tensor of shape {tuple(features.shape)}"
            if isinstance(features, torch.Tensor)
            else type(features).__name__
        )
        raise ValueError(
            f"`layer` {layer!r} does not output a feature map (N, C, H, W) but {got}; choose a convolutional layer "
            f"(e.g. a block of the network)."
        )
    return features


class Objective:
    """A per-image quantity to maximize: ``objective(features) -> (N,)``.

    Args:
        fn: ``fn({layer: tensor}) -> (N,)``.
        layers: the layers ``fn`` reads.
        name: a readable description (kept through arithmetic).
    """

    def __init__(self, fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], layers: Sequence[str], name: str):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name

    def __call__(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(features)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda f: self(f) + other, self.layers, f"{self.name} + {other:g}")
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda f: self(f) + other(f), self.layers + other.layers, f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self):
        return Objective(lambda f: -self(f), self.layers, f"-({self.name})")

    def __sub__(self, other):
        if isinstance(other, (int, float)):
            return self + (-other)
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda f: self(f) - other(f), self.layers + other.layers, f"{self.name} - ({other.name})")

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, scalar):
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            return NotImplemented
        return Objective(lambda f: scalar * self(f), self.layers, f"{scalar:g} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool) or scalar == 0:
            return NotImplemented
        return self * (1.0 / scalar)


def _per_image(indices: Indices, n: int, what: str) -> torch.Tensor:
    if isinstance(indices, int):
        return torch.full((n,), indices, dtype=torch.long)
    if len(indices) != n:
        raise ValueError(f"`{what}` has {len(indices)} entries for a batch of {n} images; give one, or one per image.")
    return torch.as_tensor(list(indices), dtype=torch.long)


def check_channels(channels: Indices, num_channels: int, layer: str) -> None:
    """A ValueError naming the layer's channel count when an index is out of range."""
    for c in [channels] if isinstance(channels, int) else channels:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_channels:
            raise ValueError(
                f"channel {c!r} does not exist: layer {layer!r} has {num_channels} channels "
                f"(indices 0..{num_channels - 1})."
            )


def _select(features: torch.Tensor, indices: Indices, layer: str) -> torch.Tensor:
    """``(N, H, W)``: for each image the map of its channel."""
    features = check_feature_map(features, layer)
    check_channels(indices, features.shape[1], layer)
    idx = _per_image(indices, len(features), "channels").to(features.device)
    return features[torch.arange(len(features), device=features.device), idx]


def channel(layer: str, index: Indices) -> Objective:
    """Mean activation of channel ``index`` of ``layer`` over all positions (one index, or one per image)."""
    name = f"channel({layer}, {index})"
    return Objective(lambda f: _select(f[layer], index, layer).flatten(1).mean(1), [layer], name)


def neuron(layer: str, index: Indices, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel ``index`` at one position (default the centre) of ``layer``'s map."""

    def fn(f):
        maps = _select(f[layer], index, layer)
        h, w = maps.shape[-2:]
        row, col = h // 2 if y is None else y, w // 2 if x is None else x
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"neuron position (x={col}, y={row}) is outside layer {layer!r}'s {h}x{w} map.")
        return maps[:, row, col]

    return Objective(fn, [layer], f"neuron({layer}, {index}, x={x}, y={y})")


def layer_norm(layer: str) -> Objective:
    """ "Deep dream": the mean squared activation of the whole layer."""
    return Objective(
        lambda f: check_feature_map(f[layer], layer).pow(2).flatten(1).mean(1), [layer], f"layer_norm({layer})"
    )
