"""Video files <-> ``(T, 3, H, W)`` frames in [0, 1]: one PyAV reader (:class:`VideoFrames`), which
:func:`read_video` and the training data (:func:`diffinv.datasets.read_video_frames`) share, and mp4 writers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path, check_regular_file
from .images import from_array

__all__ = ["VideoClip", "VideoFrames", "read_video", "write_side_by_side", "write_video"]


class VideoFrames:
    """The one PyAV reader: iterates ``(frame number, uint8 HWC RGB array)`` over frames
    ``start, start + stride, ... < stop`` of the first video stream.

    After (or during) iteration, ``decoded`` is the number of frames decoded (all frames up to
    the end of the selection, selected or not) and ``fps`` the stream's frame rate.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a regular file, is empty, not a readable video, or has no video
            stream; bad range.

    Example:
        >>> for index, array in VideoFrames("clip.mp4", stride=2): ...
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, stop: int | None = None, stride: int = 1):
        self.path = check_regular_file(path, "video file")
        if self.path.stat().st_size == 0:
            raise ValueError(f"video file {str(self.path)!r} is empty (0 bytes).")
        if start < 0 or stride < 1:
            raise ValueError(f"`start` must be >= 0 and `stride` >= 1, got start={start}, stride={stride}.")
        if stop is not None and stop <= start:
            raise ValueError(f"`stop` must be greater than `start`, got start={start}, stop={stop}.")
        self.start, self.stop, self.stride = start, stop, stride
        self.decoded, self.fps = 0, 25.0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError(f"video file {str(self.path)!r} has no video stream.")
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate or 25)
                for i, frame in enumerate(container.decode(stream)):
                    if self.stop is not None and i >= self.stop:
                        break
                    self.decoded = i + 1
                    if i >= self.start and (i - self.start) % self.stride == 0:
                        yield i, frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, UnicodeDecodeError) as err:  # a corrupt header may hold invalid UTF-8
            raise ValueError(
                f"video file {str(self.path)!r} could not be read as a video ({err}). Expected a file FFmpeg can "
                f"decode, e.g. an H.264 mp4; it may be truncated or not a video."
            ) from err


@dataclass
class VideoClip:
    """Frames of a video file.

    Attributes:
        frames: ``(T, 3, H, W)`` in [0, 1].
        indices: the frame number of each frame in the file (0-based, decode order).
        fps: frame rate of the selection (the file's rate divided by the stride).
        path: the file.
        num_frames: frames in the whole file (decoded up to the end of the selection only,
            so a lower bound when ``stop`` was given).
    """

    frames: torch.Tensor
    indices: list[int]
    fps: float
    path: str
    num_frames: int

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def names(self) -> list[str]:
        """``"clip.mp4#12"`` per frame: the FeatureSet sources."""
        name = Path(self.path).name
        return [f"{name}#{i}" for i in self.indices]


def read_video(
    path: str | os.PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
) -> VideoClip:
    """Decodes frames ``start, start + stride, ... < stop`` of a video file with PyAV.

    Args:
        path: any container/codec FFmpeg reads (mp4, mkv, avi, ...); the first video stream.
        start: first frame (0-based).
        stop: end of the range, exclusive (``None``: to the end of the clip).
        stride: keep every ``stride``-th frame.
        size: resize the shorter side and center-crop to ``size`` (an int means square);
            ``None`` keeps the native size.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not a readable video, has no video stream or no
            frames, or the frame range lies outside the clip.

    Example:
        >>> clip = read_video("bigbuckbunny.mp4", start=16, stop=48, stride=2, size=128)
        >>> clip.frames.shape, clip.indices[:3]
        (torch.Size([16, 3, 128, 128]), [16, 18, 20])
    """
    reader = VideoFrames(path, start=start, stop=stop, stride=stride)
    frames, indices = [], []
    for i, array in reader:
        frames.append(from_array(array, size))
        indices.append(i)
    count = reader.decoded
    if count == 0:
        raise ValueError(f"video file {str(path)!r} has no frames.")
    if start >= count or (stop is not None and stop > count):
        raise ValueError(
            f"frame range start={start}, stop={stop} is outside the clip: {str(path)!r} has {count} frames "
            f"(0..{count - 1})."
        )
    return VideoClip(torch.stack(frames), indices, reader.fps / stride, str(path), count)


def _encoder() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # not built into this FFmpeg
            continue
    raise RuntimeError("this PyAV build has no H.264 or MPEG-4 encoder; cannot write mp4 files.")


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 25.0, *, crf: int = 18) -> Path:
    """Writes ``(T, 3, H, W)`` frames in [0, 1] as an H.264 mp4, atomically.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes). The file appears
    under its final name only once complete.
    """
    import av

    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or len(frames) == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"`frames` must be a (T, 3, H, W) tensor with T >= 1, got {shape}.")
    if not fps > 0:
        raise ValueError(f"`fps` must be positive, got {fps}.")
    path = Path(path)
    array = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w = array.shape[1:3]
    array = np.pad(array, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec = _encoder()
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for image in array:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_side_by_side(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, fps: float = 25.0, gap: int = 2
) -> Path:
    """Writes an mp4 of ``original | reconstruction``, frame by frame (white gap between)."""
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"`originals` {tuple(originals.shape)} and `reconstructions` {tuple(reconstructions.shape)} "
            f"differ in shape."
        )
    sep = torch.ones(*originals.shape[:3], gap)
    return write_video(torch.cat([originals.cpu().float(), sep, reconstructions.cpu().float()], dim=3), path, fps)
