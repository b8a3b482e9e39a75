"""Video: per-clip features, and windowed inversion with temporal smoothing.

The frames of a clip are inverted in *windows* of a few consecutive frames, each window one batch, smoothed
across windows (:mod:`~diffinv.jobs.video.windows`) by :func:`invert_video` (:mod:`~diffinv.jobs.video.job`),
into a run store of PNG frames and records when given an output folder. Its figures (PSNR/SSIM, temporal
consistency, flicker) and the table of several clips are :mod:`~diffinv.jobs.video.summary`.

Example:
    >>> clip = read_video(sample_video_path(), start=16, stop=32, size=128)
    >>> target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(128, 128))
    >>> features = extract_video_features(target, clip, "blocks.2")
    >>> out = invert_video(PixelInverter(target, temporal_weight=30.0), features,
    ...                    references=clip.frames, out_dir="video_out")
    >>> out.summary["temporal_consistency"], out.summary["source_temporal_consistency"]
"""

from .features import extract_video_features
from .frames import OUTPUTS, frame_path
from .job import VideoInversionOutput, VideoJob, invert_video
from .summary import CLIP_FIGURES, METRICS_FILE, SUMMARY_FILE, video_summary, write_clips_summary
from .windows import WindowItem

__all__ = [
    "CLIP_FIGURES",
    "METRICS_FILE",
    "OUTPUTS",
    "SUMMARY_FILE",
    "VideoInversionOutput",
    "VideoJob",
    "WindowItem",
    "extract_video_features",
    "frame_path",
    "invert_video",
    "video_summary",
    "write_clips_summary",
]
