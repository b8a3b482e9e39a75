"""I/O at the edges: image and video files <-> [0, 1] NCHW tensors, and atomic writes.

Every file diffinv writes appears under its final name only once complete
(:func:`atomic_path`): an interrupted run never leaves a half-written PNG, JSON or mp4.
Video is decoded by one PyAV reader (:class:`VideoFrames`), which
:func:`read_video` and the training data (:func:`diffinv.datasets.read_video_frames`) share.
"""

from .decoding import ImageMemoryError
from .environment import ENVIRONMENT_VARIABLES, available_host_memory, check_environment, max_image_pixels
from .files import atomic_path, check_regular_file, cut_short, write_json
from .fingerprints import fingerprint_path, pixels_fingerprint
from .images import (
    IMAGE_SUFFIXES,
    SAMPLE_PHOTOS,
    collect_images,
    from_array,
    image_groups,
    list_images,
    load_image,
    load_images,
    sample_images,
    sample_photo,
    save_figure,
    save_image,
    to_pil,
)
from .video import VideoClip, VideoFrames, read_video, write_side_by_side, write_video

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "IMAGE_SUFFIXES",
    "SAMPLE_PHOTOS",
    "VideoClip",
    "ImageMemoryError",
    "atomic_path",
    "available_host_memory",
    "check_environment",
    "check_regular_file",
    "collect_images",
    "cut_short",
    "fingerprint_path",
    "from_array",
    "VideoFrames",
    "image_groups",
    "list_images",
    "max_image_pixels",
    "pixels_fingerprint",
    "save_figure",
    "load_image",
    "load_images",
    "read_video",
    "sample_images",
    "sample_photo",
    "save_image",
    "to_pil",
    "write_json",
    "write_side_by_side",
    "write_video",
]
