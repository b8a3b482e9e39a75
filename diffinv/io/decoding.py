"""Decoding image files within memory: the memory a decode needs, checked before it, and large images decoded
reduced (the centered crop that the resize keeps, at about twice the asked size)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import ExifTags, Image

from .environment import available_host_memory

__all__ = ["ImageMemoryError"]


def _crop_box(w: int, h: int, h_out: int, w_out: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of a ``w x h`` image that :func:`_fit` keeps at ``h_out x w_out``:
    its centered crop at that aspect ratio, rounded as the resize-then-crop rounds it."""
    scale = max(h_out / h, w_out / w)
    h_new, w_new = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    top_new, left_new = (h_new - h_out) // 2, (w_new - w_out) // 2
    sy, sx = h / h_new, w / w_new
    left, top = round(left_new * sx), round(top_new * sy)
    return left, top, max(left + 1, round((left_new + w_out) * sx)), max(top + 1, round((top_new + h_out) * sy))


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
