"""The features of a clip: every frame through the target, in batches (:func:`extract_video_features`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...features import FeatureSet
from ...io import VideoClip
from ...targets import TargetNetwork

__all__ = ["extract_video_features"]


@torch.no_grad()
def extract_video_features(
    target: TargetNetwork,
    clip: VideoClip | torch.Tensor,
    layer: str | None = None,
    *,
    batch_size: int = 16,
    sources: Sequence[str] | None = None,
) -> FeatureSet:
    """The FeatureSet of every frame of a clip (``clip.frames`` or a ``(T, 3, H, W)`` tensor).

    Frames go through ``target`` in batches of ``batch_size``; sources are ``"clip.mp4#i"``.
    """
    frames = clip.frames if isinstance(clip, VideoClip) else clip
    if sources is None:
        sources = clip.names if isinstance(clip, VideoClip) else [f"frame_{i}" for i in range(len(frames))]
    device = target.mean.device
    parts = [
        FeatureSet.extract(target, frames[i : i + batch_size].to(device), layer)
        for i in range(0, len(frames), batch_size)
    ]
    first = parts[0]
    return FeatureSet(
        torch.cat([p.features for p in parts]),
        first.target,
        first.layer,
        first.input_size,
        first.preprocessing,
        list(sources),
    )
