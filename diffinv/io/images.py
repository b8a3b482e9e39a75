"""Image files and arrays <-> ``(3, H, W)`` float tensors in [0, 1]: reading (checked against the pixel limit
and the memory available), resizing, listing image files, the sample photos, writing PNGs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .decoding import _FULL_BYTES_PER_PIXEL, ImageMemoryError, _check_decode_memory, _crop_box, _decode_reduced
from .environment import _PIXELS_VARIABLE, max_image_pixels
from .files import atomic_path, check_regular_file

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLE_PHOTOS",
    "collect_images",
    "from_array",
    "image_groups",
    "list_images",
    "load_image",
    "load_images",
    "sample_images",
    "sample_photo",
    "save_figure",
    "save_image",
    "to_pil",
]

# Real photos bundled with scikit-image (public domain / CC0), used by the demo.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# Pixels above which an image is decoded reduced (:func:`load_image`) and an intermediate of the resize is
# cropped first (:func:`_fit`): 32 Mpx, a 8K photo; below it, images are read as they always were (the same tensor).
_LARGE = 2**25


def _out_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


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
