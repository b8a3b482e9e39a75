"""The windows of a clip and how temporal smoothing runs across them.

With ``temporal_weight`` λ > 0 the inverter adds ``λ·Σ_t ‖v_t − v_{t−1}‖²/d`` over the window's temporal
variables (:func:`diffinv.losses.temporal_smoothness`): for pixel the rendered images, for dip the generators'
output images, for any other inverter what its config declares (``temporal_weight``, ``accepts_init``,
``accepts_anchor``). The next window is warm-started from the previous window's last reconstruction, which is
also a fixed *anchor* in front of the window's temporal term (``boundary="anchor"``); without ``anchor`` the
previous frame is re-inverted as the window's first frame and its new result discarded (``"overlap"``).
λ = 0 means independent frames (no smoothing, no warm start, unless asked for).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...inverters import Inverter

__all__ = ["WindowItem", "checked_references", "video_options", "windows_of"]


@dataclass(frozen=True)
class WindowItem:
    """One window of a clip: consecutive ``positions`` inverted as one batch."""

    positions: tuple[int, ...]

    def __str__(self) -> str:
        return f"frames {self.positions[0]}-{self.positions[-1]}"


def windows_of(todo: Sequence[int], window: int) -> list[list[int]]:
    """Runs of consecutive positions, cut into pieces of at most ``window``."""
    runs: list[list[int]] = []
    for p in todo:
        if runs and p == runs[-1][-1] + 1 and len(runs[-1]) < window:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def video_options(
    inverter: Inverter, n: int, window, boundary: str, warm_start: bool | None, state
) -> tuple[float, bool, str, bool]:
    """``(temporal_weight, warm_start, boundary, split)`` as the run uses them (see :func:`invert_video`)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` must be a positive integer, got {window!r}.")
    if boundary not in ("auto", "anchor", "overlap", "none"):
        raise ValueError(f"`boundary` must be 'auto', 'anchor', 'overlap' or 'none', got {boundary!r}.")
    config = inverter.config
    weight = float(config.temporal_weight) if config.temporal else 0.0
    warm_start = weight > 0 if warm_start is None else bool(warm_start)
    if warm_start and not config.accepts_init:
        warnings.warn(f"{type(inverter).__name__}.invert takes no `init=`; frames are not warm-started.", stacklevel=4)
        warm_start = False
    if boundary == "auto":
        boundary = "anchor" if config.accepts_anchor else "overlap"
    if boundary == "anchor" and not config.accepts_anchor:
        raise ValueError(f"`boundary='anchor'` needs {type(inverter).__name__}.invert(anchor=...); use 'overlap'.")
    if weight <= 0:
        boundary = "none"
    split = state is not None and state.num_processes > 1
    if split and (weight > 0 or warm_start):
        raise ValueError(
            f"the windows of one clip can be split across processes only when they are independent "
            f"(temporal_weight 0 and no warm start), got temporal_weight={weight}, "
            f"warm_start={warm_start}: each window starts from the previous one's result."
        )
    return weight, warm_start, boundary, split


def checked_references(references: torch.Tensor | None, n: int, size) -> torch.Tensor | None:
    if references is None:
        return None
    if len(references) != n:
        raise ValueError(
            f"`references` has {len(references)} frames but `features` has {n}; they must match one to one."
        )
    if tuple(references.shape[1:]) != (3, *size):
        raise ValueError(
            f"`references` must be (T, 3, {size[0]}, {size[1]}) like the features' input size, "
            f"got {tuple(references.shape)}."
        )
    return references.detach().float().cpu()
