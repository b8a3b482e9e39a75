"""I/O at the edges: image and video files <-> [0, 1] NCHW tensors, and atomic writes.

Every file diffinv writes appears under its final name only once complete
(:func:`atomic_path`): an interrupted run never leaves a half-written PNG, JSON or mp4.
Video is decoded by one PyAV reader (:class:`VideoFrames`), which
:func:`read_video` and the training data (:func:`diffinv.datasets.read_video_frames`) share.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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

# Real photos bundled with scikit-image (public domain / CC0), used by the demo.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# Pixels above which an image is decoded reduced (:func:`load_image`) and an intermediate of the resize is
# cropped first (:func:`_fit`): 32 Mpx, a 8K photo; below it, images are read as they always were (the same tensor).
_LARGE = 2**25


def _out_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _crop_box(w: int, h: int, h_out: int, w_out: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of a ``w x h`` image that :func:`_fit` keeps at ``h_out x w_out``:
    its centered crop at that aspect ratio, rounded as the resize-then-crop rounds it."""
    scale = max(h_out / h, w_out / w)
    h_new, w_new = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    top_new, left_new = (h_new - h_out) // 2, (w_new - w_out) // 2
    sy, sx = h / h_new, w / w_new
    left, top = round(left_new * sx), round(top_new * sy)
    return left, top, max(left + 1, round((left_new + w_out) * sx)), max(top + 1, round((top_new + h_out) * sy))


def _fit(image: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Resizes the shorter side and center-crops to ``size`` (an int means square).

    An image of an extreme aspect ratio (1 x 1,000,000 px) is center-cropped to the target's aspect ratio
    first, so that no intermediate has an enormous long side.
    """
    if size is None:
        return image
    h_out, w_out = _out_size(size)
    _, h, w = image.shape
    scale = max(h_out / h, w_out / w)
    h_new, w_new = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    if h_new * w_new > max(2 * h_out * w_out, _LARGE):  # crop first (a view: no copy)
        left, top, right, bottom = _crop_box(w, h, h_out, w_out)
        image, h, w = image[:, top:bottom, left:right], bottom - top, right - left
        scale = max(h_out / h, w_out / w)
        h_new, w_new = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    image = F.interpolate(image[None], size=(h_new, w_new), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (h_new - h_out) // 2, (w_new - w_out) // 2
    return image[:, top : top + h_out, left : left + w_out].clamp(0, 1)


def from_array(array: np.ndarray, size=None) -> torch.Tensor:
    """HWC (or HW) array, grey or RGB[A], -> (3, H, W) float tensor in [0, 1].

    Integers are scaled by their type's range (uint8 by 255, uint16 by 65535, ...); floats
    are taken as [0, 1].
    """
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3]
    if array.shape[-1] == 2:  # grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    scale = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).permute(2, 0, 1) / scale
    return _fit(tensor, size)


def _pixels(img: Image.Image) -> np.ndarray:
    """The pixels of a PIL image at their full bit depth (16-bit and float images are not clipped to 8 bits).

    32-bit integer images (mode ``"I"``) are read by their values: within 0..65535 as 16-bit data (16-bit PNGs
    open as this mode), larger non-negative values divided by their maximum, and signed data with negative values
    (int16 / int32 TIFFs) mapped from their own minimum and maximum to [0, 1] (a constant image is black).
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":
        array = np.asarray(img)
        low, high = int(array.min()), int(array.max())
        if low >= 0:
            return array.astype(np.uint16) if high <= 65535 else (array / high).astype(np.float32)
        return ((array.astype(np.float64) - low) / max(1, high - low)).astype(np.float32)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        return array / max(1.0, float(array.max()))
    if img.mode in ("RGB", "L"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


_PIXELS_VARIABLE = "DIFFINV_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int | None:
    """The most pixels an image file may have (the decompression-bomb limit): ``DIFFINV_MAX_IMAGE_PIXELS``
    when set (``0``: no limit, ``None``), else the size Pillow refuses (twice ``PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        ValueError: the variable is set to something other than an integer >= 0.
    """
    text = os.environ.get(_PIXELS_VARIABLE)
    if text is None:
        return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"environment variable {_PIXELS_VARIABLE}={text!r}: expected an integer >= 0, the most "
            f"pixels an image file may have (0 for no limit), e.g. {_PIXELS_VARIABLE}=200000000."
        )
    return value or None


#: Every ``DIFFINV_*`` environment variable that diffinv reads (the library, the slow tests, ``.ci/run``), with
#: what it sets; :func:`check_environment` refuses any other (a typo would otherwise be ignored without a word).
ENVIRONMENT_VARIABLES = {
    _PIXELS_VARIABLE: "the most pixels an image file may have (0: no limit)",
    "DIFFINV_SD_PATH": "a Stable Diffusion folder, for the slow tests",
    "DIFFINV_BIGGAN": "BigGAN weights, for the slow tests",
    "DIFFINV_VENV": "the virtual environment of .ci/run",
}


def check_environment() -> None:
    """Checks every ``DIFFINV_*`` environment variable (before any work), so that a bad value is
    reported at once, not when the first image is read, and a misspelt name is not ignored.

    Raises:
        ValueError: a variable has a value that is not what it expects (named, with the value), or a
            ``DIFFINV_*`` variable is not one of :data:`ENVIRONMENT_VARIABLES` (named, with the closest known name).
    """
    max_image_pixels()
    unknown = sorted(
        name for name in os.environ if name.upper().startswith("DIFFINV_") and name not in ENVIRONMENT_VARIABLES
    )
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name.upper(), ENVIRONMENT_VARIABLES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        shown = name if len(name) <= 60 else f"{name[:60]}..."
        raise ValueError(
            f"environment variable {shown}={_shown(os.environ[name])} is not one diffinv reads; {hint}"
            f"The known ones are {', '.join(ENVIRONMENT_VARIABLES)}. Rename or unset it (`unset {shown}`)."
        )


def cut_short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, with its length, when it is longer (a 50 MB name is not printed)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _shown(text: str, limit: int = 60) -> str:
    """``text`` as ``repr`` would show it, cut to about ``limit`` characters (a 50 MB value is not printed)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a regular file (or a link to one).

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: a folder, a FIFO, a device (``/dev/zero``) or a socket is there: such a file could
            block or never end.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    kind = (
        "a folder"
        if path.is_dir()
        else "a FIFO (named pipe)"
        if path.is_fifo()
        else "a device"
        if path.is_char_device() or path.is_block_device()
        else "a socket"
        if path.is_socket()
        else "a special file"
    )
    raise ValueError(f"{what} {str(path)!r} is not a regular file (it is {kind}); expected a file on disk.")


def load_image(
    path: str | os.PathLike, size: int | tuple[int, int] | None = None, *, max_pixels: int | None = None
) -> torch.Tensor:
    """Reads one image file as ``(3, H, W)`` in [0, 1], resized and center-cropped to ``size``.

    8-bit, 16-bit and float images are scaled by their own range, signed integer images by their own
    minimum and maximum (:func:`_pixels`). The EXIF orientation is applied (a phone photo taken upright is
    returned upright). Before decoding, the size in the file's header is checked against Pillow's
    decompression-bomb limit (:func:`max_image_pixels`: ``DIFFINV_MAX_IMAGE_PIXELS``; ``0`` lifts it) and
    the memory that decoding needs against the memory available. An image far larger than ``size``
    (above 32 Mpx, at least 4 times the size) is decoded reduced (Pillow's ``draft`` for JPEG, ``reduce``
    over the centered crop at the target's aspect ratio), so that no full-size float copy exists; the
    others are read exactly as they always were.

    Args:
        path: the image file.
        size: resize the shorter side and center-crop to ``size`` (an int means square); ``None``: as is.
        max_pixels: the most pixels the file may have, instead of the user's limit: for files a run
            wrote itself and whose size it knows (its own outputs never fail on the user's limit,
            and a larger file planted in their place is refused).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a regular file, it cannot be decoded, it is larger than the
            decompression-bomb limit, or decoding it needs more memory than is available.

    Example:
        >>> load_image("cat.jpg", 224).shape
        torch.Size([3, 224, 224])
    """
    path = check_regular_file(path, "image file")
    limit = max_image_pixels() if max_pixels is None else max_pixels
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # Image.open reads the header only: the size is checked here, before decoding
        with Image.open(path) as img:
            if limit is not None and img.width * img.height > limit:
                raise Image.DecompressionBombError(f"{img.width} x {img.height} = {img.width * img.height} pixels")
            if size is not None and img.width * img.height > _LARGE:
                array = _pixels(_decode_reduced(img, path, _out_size(size)))
            else:
                _check_decode_memory(img, path, _FULL_BYTES_PER_PIXEL * img.width * img.height)
                array = _pixels(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as err:
        if max_pixels is not None:
            raise ValueError(
                f"image file {str(path)!r} is larger than expected ({err}; at most {limit} pixels); "
                f"it is not the file this run wrote."
            ) from err
        raise ValueError(
            f"image file {str(path)!r} is larger than the decompression-bomb limit of {limit} pixels "
            f"({err}). If you trust the file, set {_PIXELS_VARIABLE} to a larger number (0 for no limit)."
        ) from err
    except ImageMemoryError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image file {str(path)!r} could not be decoded as an image ({err}).") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return from_array(array, size)


class ImageMemoryError(ValueError):
    """Decoding an image file needs more memory than is available (a user error: exit code 2)."""


# Bytes per pixel at the peak of reading an image at full size, measured with an RGB PNG of 169 Mpx (29.6 B):
# Pillow's 4-byte pixels, the numpy copy, the float32 copy and its scaled copy, the EXIF-rotated copy.
_FULL_BYTES_PER_PIXEL = 36
# Pillow's storage: 1 byte for "1", "L" and "P", 2 for "I;16*", 4 for every other mode (RGB is stored as RGBX).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Modes that Image.reduce takes as they are; others are converted first (as _pixels would read them).
_CONVERT_TO_REDUCE = {"1": "L", "P": "RGB", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


def _transpose_box(box: tuple[int, int, int, int], size: tuple[int, int], method: Image.Transpose) -> tuple[int, ...]:
    """Where ``box`` of an image of ``size`` (``(W, H)``) lies after ``img.transpose(method)``."""
    (l, t, r, b), (w, h) = box, size  # noqa: E741 (left, top, right, bottom)
    return {
        Image.Transpose.FLIP_LEFT_RIGHT: (w - r, t, w - l, b),
        Image.Transpose.FLIP_TOP_BOTTOM: (l, h - b, r, h - t),
        Image.Transpose.ROTATE_180: (w - r, h - b, w - l, h - t),
        Image.Transpose.TRANSPOSE: (t, l, b, r),
        Image.Transpose.ROTATE_90: (t, w - r, b, w - l),
        Image.Transpose.ROTATE_270: (h - b, l, h - t, r),
        Image.Transpose.TRANSVERSE: (h - b, w - r, h - t, w - l),
    }[method]


def _decode_reduced(img: Image.Image, path: Path, out: tuple[int, int]) -> Image.Image:
    """A large image, not yet decoded, -> its centered crop at the aspect ratio of ``out`` (``(H, W)``, upright),
    decoded at about twice ``out`` (at least): JPEG by its DCT scaling (``draft``), others by ``reduce``.

    The memory it needs (the decoded file, then the reduced image read at full depth) is checked first.
    """
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    h_out, w_out = out[::-1] if orientation in (5, 6, 7, 8) else out  # in the file's own (stored) orientation
    scale = max(h_out / img.height, w_out / img.width)  # the resize that _fit would make
    if scale < 0.25:
        img.draft(
            None, (math.ceil(2 * scale * img.width), math.ceil(2 * scale * img.height))
        )  # JPEG only: a no-op else
    scale = max(h_out / img.height, w_out / img.width)
    upright = (img.height, img.width) if orientation in (5, 6, 7, 8) else (img.width, img.height)
    # the box that _fit keeps of the upright image, in the stored image's coordinates
    box = _crop_box(*upright, *out)
    if orientation in _UPRIGHT:
        box = _transpose_box(box, upright, _INVERSE.get(_UPRIGHT[orientation], _UPRIGHT[orientation]))
    factor = max(1, math.floor(0.5 / scale))
    left, top, right, bottom = box
    w_box, h_box = max(1, (right - left) // factor) * factor, max(1, (bottom - top) // factor) * factor
    left, top = left + (right - left - w_box) // 2, top + (bottom - top - h_box) // 2  # whole blocks, still centered
    box = (left, top, left + w_box, top + h_box)
    reduced = (w_box // factor) * (h_box // factor)
    stored = _STORED_BYTES.get(img.mode, 4) * img.width * img.height
    converted = 4 * img.width * img.height if img.mode in _CONVERT_TO_REDUCE else 0
    _check_decode_memory(img, path, stored + converted + _FULL_BYTES_PER_PIXEL * reduced)
    if img.mode in _CONVERT_TO_REDUCE:
        img = img.convert(_CONVERT_TO_REDUCE[img.mode])
    img = img.reduce(factor, box)
    return img.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else img


def _check_decode_memory(img: Image.Image, path: Path, need: int) -> None:
    """Raises :class:`ImageMemoryError` when reading ``img`` needs more than the memory available now."""
    have = available_host_memory()
    if need > have:
        raise ImageMemoryError(
            f"image file {str(path)!r} is {img.width} x {img.height} pixels ({img.mode}): reading it needs an estimated "
            f"{need / 2**20:.0f} MiB of memory, but only {have / 2**20:.0f} MiB is available. Use a smaller image "
            f"(or a smaller `size`: an image much larger than it is decoded reduced), or free memory."
        )


def available_host_memory() -> int:
    """Bytes of host memory available now: psutil's, else /proc/meminfo's ``MemAvailable``, within a cgroup limit."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            text = Path("/proc/meminfo").read_text()
            available = int(text.split("MemAvailable:")[1].split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return min(available, max(0, int(limit) - usage))
    return available


def load_images(paths: Sequence[str | os.PathLike], size: int | tuple[int, int] | None = 224) -> torch.Tensor:
    """Reads several image files into one ``(N, 3, H, W)`` batch (all decoded before returning)."""
    if not paths:
        raise ValueError("no image files were given.")
    images = [load_image(p, size) for p in paths]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass a `size` to bring them to one.")
    return torch.stack(images)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {str(folder)!r} has no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def image_groups(paths: Sequence[str | os.PathLike]) -> list[list[Path]]:
    """Files and folders -> groups of image files: one group per folder, one per loose file.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not an image file, or a folder holds none.
    """
    groups = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            groups.append(list_images(p))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{str(p)!r} is not an image file ({', '.join(IMAGE_SUFFIXES)}).")
            groups.append([p])
        elif p.exists():
            check_regular_file(p, "image file")  # a FIFO or a device: refused as not a regular file
        else:
            raise FileNotFoundError(f"image file or folder {str(p)!r} does not exist.")
    return groups


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files and folders (their image files, sorted) -> one list of files, in order."""
    if not paths:
        raise ValueError("no image files or folders were given.")
    return [f for group in image_groups(paths) for f in group]


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's ``skimage.data`` photos (installed with ``diffinv[demo]``), as its array.

    Raises:
        ImportError: scikit-image is not installed.
        ValueError: ``name`` is not an image of ``skimage.data``.
    """
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "the sample photos come from scikit-image: `pip install scikit-image` (or `pip install diffinv[demo]`)."
        ) from err
    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"`{name}` is not an image of skimage.data; try one of {', '.join(SAMPLE_PHOTOS)}.")
    return loader()


def sample_images(names: Sequence[str] = SAMPLE_PHOTOS[:4], size: int | tuple[int, int] = 224) -> torch.Tensor:
    """Real photos from scikit-image's ``skimage.data`` (:func:`sample_photo`), resized and center-cropped."""
    return torch.stack([from_array(sample_photo(name), size) for name in names])


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


# ---------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    The parent folder is created; on an error the temporary file is removed and ``path`` is
    left as it was; a full disk (or quota) is reported as an ``OSError`` that names ``path``. The temporary
    name (per process) keeps the suffix (``.x.PID.tmp.png``) for writers that
    pick the format from it.

    Example:
        >>> with atomic_path("out/grid.png") as tmp:
        ...     image.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # one per writer process
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _FULL:  # a writer's bare "No space left on device": say which file, and where
            raise OSError(
                err.errno,
                f"{err.strerror or os.strerror(err.errno)}: could not write {str(path)!r}; free "
                f"space on its disk or write elsewhere",
            ) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file too large


_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")
_NOT_MODEL = ("checkpoints", "training_log.json", "manifest.json")


def fingerprint_path(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """A short fingerprint of a model file or folder (16 hex digits).

    For a folder, every model file below it (configs and weights; not training checkpoints or
    logs) counts with its relative path, size, and its first and last ``chunk`` bytes: fast on
    multi-GB weights, and any re-trained or replaced model changes it.
    """
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    else:
        root = path
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in _MODEL_SUFFIXES
            and not any(part in _NOT_MODEL or part.startswith(".") for part in p.relative_to(path).parts)
        )
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}:{size}:".encode())
        with open(file, "rb") as f:
            digest.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def pixels_fingerprint(images: torch.Tensor) -> str:
    """A 16-hex-digit fingerprint of images in [0, 1] as 8-bit pixels (what a run inverts and scores against)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:16]


def write_json(path: str | os.PathLike, payload) -> Path:
    """Writes ``payload`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return path


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Writes ``(3, H, W)`` in [0, 1] as a PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        to_pil(image).save(tmp, format="PNG")
    return path


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Writes a matplotlib figure as a PNG, atomically, and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- video
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
