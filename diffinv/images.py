"""Image I/O at the edges: files and sample photos -> [0, 1] NCHW tensors -> PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = ["load_image", "load_images", "sample_images", "save_image", "to_pil", "SAMPLE_PHOTOS", "IMAGE_SUFFIXES"]

# Real photos bundled with scikit-image (public domain / CC0), used by the demo.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _fit(image: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Resizes the shorter side and center-crops to ``size`` (an int means square)."""
    if size is None:
        return image
    h_out, w_out = (size, size) if isinstance(size, int) else size
    _, h, w = image.shape
    scale = max(h_out / h, w_out / w)
    h_new, w_new = max(h_out, round(h * scale)), max(w_out, round(w * scale))
    image = F.interpolate(image[None], size=(h_new, w_new), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (h_new - h_out) // 2, (w_new - w_out) // 2
    return image[:, top : top + h_out, left : left + w_out].clamp(0, 1)


def from_array(array: np.ndarray, size=None) -> torch.Tensor:
    """HWC uint8 / float array (grey or RGB[A]) -> (3, H, W) float tensor in [0, 1]."""
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = array[..., :3]
    tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float()
    if array.dtype == np.uint8:
        tensor = tensor / 255.0
    return _fit(tensor, size)


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Reads one image file as ``(3, H, W)`` in [0, 1], resized and center-cropped to ``size``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist.")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image file {str(path)!r} could not be decoded as an image ({err}).") from err
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


def sample_images(names: Sequence[str] = SAMPLE_PHOTOS[:4], size: int | tuple[int, int] = 224) -> torch.Tensor:
    """Real photos from scikit-image's ``skimage.data`` (installed with ``diffinv[demo]``)."""
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "the sample photos come from scikit-image: `pip install scikit-image` (or `pip install diffinv[demo]`)."
        ) from err
    images = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"`{name}` is not an image of skimage.data; try one of {', '.join(SAMPLE_PHOTOS)}.")
        images.append(from_array(loader(), size))
    return torch.stack(images)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Writes a PNG atomically (a half-written file never has the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
