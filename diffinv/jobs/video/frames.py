"""The frames a video run writes (``frames/frame_%05d.png``) and reads back when it resumes.

A frame is finished when it has a record and its PNG reads back at the clip's size; the metrics are computed
on exactly the written 8-bit frames (:func:`quantize_8bit`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ...io import load_image
from ..store import RunStore
from .summary import METRICS_FILE

__all__ = ["OUTPUTS", "finished_frames", "frame_image", "frame_path", "quantize_8bit"]

# What a video run writes into its folder besides the store's manifest and records (the mp4s are
# written by the command and the examples); `overwrite=True` removes them.
OUTPUTS = ("frames", METRICS_FILE, "reconstruction.mp4", "side_by_side.mp4")


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG holds: metrics are computed on exactly the written frames."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


def frame_path(out_dir: str | os.PathLike, frame: int) -> Path:
    """Where :func:`invert_video` writes the reconstruction of clip frame number ``frame``."""
    return Path(out_dir) / "frames" / f"frame_{frame:05d}.png"


def frame_image(store: RunStore, record: Mapping, size: Sequence[int]) -> torch.Tensor | None:
    """The PNG of a frame record when it reads back at ``size`` (the frame is finished), else ``None``."""
    file = frame_path(store.folder, record["frame"])
    if not file.is_file():
        return None  # the PNG never made it (or was removed): recompute
    try:
        image = load_image(file, max_pixels=size[0] * size[1])
    except (ValueError, OSError):
        return None
    return image if tuple(image.shape[-2:]) == tuple(size) else None


def finished_frames(
    store: RunStore, frame_ids: Sequence[int], size: Sequence[int]
) -> dict[int, tuple[dict, torch.Tensor]]:
    """Finished frames of the run in ``store``: ``{position: (record, image)}``.

    A frame is finished when it has a record and its PNG reads back at ``size``; a frame
    recorded more than once (its PNG was lost and it was inverted again) counts with its
    last record.
    """
    position_of = {frame: p for p, frame in enumerate(frame_ids)}
    last = {}
    for record in store.records():
        if record.get("frame") in position_of:
            last[position_of[record["frame"]]] = record
    finished = {}
    for position, record in last.items():
        image = frame_image(store, record, size)
        if image is not None:
            finished[position] = (record, image)
    return finished
