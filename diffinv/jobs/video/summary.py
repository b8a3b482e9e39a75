"""The figures of a clip (:func:`video_summary`, ``metrics.json``) and of several clips (``summary.json``).

Means over the finished frames, and the temporal-consistency figures (``temporal_consistency``,
``source_temporal_consistency``, ``temporal_ratio``, ``flicker``); a record's temporal differences are
filled in once both frames are finished (:func:`with_temporal_diffs`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ...io import write_json
from ...metrics import temporal_consistency

__all__ = [
    "CLIP_FIGURES",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "mean_abs_diff",
    "video_summary",
    "with_temporal_diffs",
    "write_clips_summary",
]

METRICS_FILE = "metrics.json"
# Several clips in one output folder: one run folder per clip, and this table of them all.
SUMMARY_FILE = "summary.json"
# The per-clip figures that summary.json lists (means over the clip's finished frames; no timings,
# so that the same results give the same summary however many processes made them).
CLIP_FIGURES = (
    "frames",
    "frames_done",
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "feature_residual_mean",
    "temporal_consistency",
    "source_temporal_consistency",
    "temporal_ratio",
    "flicker",
)


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def _finite(value) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def video_summary(
    images: torch.Tensor,
    references: torch.Tensor | None,
    done: Sequence[bool] | None = None,
    records: Sequence[Mapping] | None = None,
) -> dict:
    """Means over finished frames, and the temporal-consistency figures.

    * ``temporal_consistency``: mean ``|x̂_t − x̂_{t−1}|`` over consecutive reconstructed
      frames (lower = steadier); ``source_temporal_consistency`` the same for the source
      frames, and ``temporal_ratio`` their quotient (1 = as steady as the source).
    * ``flicker``: mean ``|(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})|`` — frame-to-frame change
      that the source does not have; it also counts motion that smoothing wiped out.

    Only pairs of consecutive frames that are both finished count. A record's value that is not a finite
    number (NaN, infinite, a word) is left out of the mean and counted: ``KEY_left_out``.
    """
    done = list(done) if done is not None else [True] * len(images)
    pairs = [t for t in range(1, len(images)) if done[t] and done[t - 1]]
    summary: dict = {"frames_done": int(sum(done)), "frames": len(images)}
    for key in ("psnr", "ssim", "feature_residual", "seconds"):
        given = [r[key] for r in (records or []) if r.get(key) is not None]
        values = [v for v in map(_finite, given) if v is not None]
        if len(values) < len(given):
            summary[f"{key}_left_out"] = len(given) - len(values)
            warnings.warn(
                f"{len(given) - len(values)} frame record(s) with a {key} that is not a finite number "
                f"(NaN, infinite or not a number) left out of its mean.",
                stacklevel=2,
            )
        if values:
            mean = sum(values) / len(values)
            summary[f"{key}_mean"] = mean
            summary[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if pairs:
        idx = torch.tensor(pairs)
        d_rec = images[idx] - images[idx - 1]
        summary["temporal_consistency"] = temporal_consistency(images, pairs)
        if references is not None:
            d_src = references[idx].float() - references[idx - 1].float()
            summary["source_temporal_consistency"] = temporal_consistency(references, pairs)
            source = max(summary["source_temporal_consistency"], 1e-12)
            summary["temporal_ratio"] = summary["temporal_consistency"] / source
            summary["flicker"] = (d_rec - d_src).abs().mean().item()
    return summary


def with_temporal_diffs(
    p: int, record: dict, images: torch.Tensor, references: torch.Tensor | None, done: Sequence[bool]
) -> dict:
    """``record`` with its temporal differences filled in when the previous frame was not finished
    at the time it was written (it was inverted later, or by another process) but is now."""
    if record.get("temporal_diff") is not None or p == 0 or not (done[p] and done[p - 1]):
        return record
    record = {**record, "temporal_diff": mean_abs_diff(images[p], images[p - 1])}
    if references is not None:
        record["source_temporal_diff"] = mean_abs_diff(references[p], references[p - 1])
    return record


def write_clips_summary(out_dir: str | os.PathLike, clips: Sequence[tuple[str, str]]) -> dict:
    """Writes ``out_dir/summary.json`` for the clips run into ``out_dir/<folder>/`` (atomic).

    Args:
        out_dir: the output folder of a several-clip run.
        clips: ``(clip, folder)`` per clip, in the order given: the clip as named on the command
            line and its run folder's name under ``out_dir``.

    Returns:
        ``{"clips": [{"clip", "folder", "source", "frames", "frames_done", "psnr_mean", ...}], "frames",
        "frames_done", "psnr_mean", "ssim_mean", "feature_residual_mean"}``: per clip the figures of
        its ``metrics.json`` summary (:data:`CLIP_FIGURES`; PSNR/SSIM and the temporal figures), and
        means over the finished frames of all clips. Built from the clip folders only, so it is the
        same whichever process (or how many) made them.
    """
    out_dir = Path(out_dir)
    rows, frames = [], []
    for clip, folder in clips:
        row: dict = {"clip": str(clip), "folder": str(folder)}
        path = out_dir / folder / METRICS_FILE
        if path.is_file():
            metrics = json.loads(path.read_text(encoding="utf-8"))
            row["source"] = metrics["config"].get("source")
            row.update({k: metrics["summary"][k] for k in CLIP_FIGURES if k in metrics["summary"]})
            frames += metrics["frames"]
        else:  # not run (yet): nothing finished
            row.update(frames_done=0)
        rows.append(row)
    summary: dict = {
        "clips": rows,
        "frames": sum(r.get("frames", 0) for r in rows),
        "frames_done": sum(r.get("frames_done", 0) for r in rows),
    }
    for key in ("psnr", "ssim", "feature_residual"):
        values = [r[key] for r in frames if r.get(key) is not None]
        if values:
            summary[f"{key}_mean"] = sum(values) / len(values)
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
