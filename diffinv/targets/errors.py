"""The errors of building a target network, and how their messages show a value."""

from __future__ import annotations

__all__ = ["SplitUnavailable", "WeightsMismatchError", "WeightsNotFoundError"]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine and cannot be downloaded here."""


class WeightsMismatchError(ValueError):
    """A state-dict file whose keys or shapes are not those of the target network (the message counts them)."""


class SplitUnavailable(ValueError):
    """The rest of the network cannot be run from this layer's features (the reason says why)."""


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
