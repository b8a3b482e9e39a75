"""True class labels of image files: from WordNet ids in file names, from class subfolders, or from a CSV.

Labels are ImageNet-1k class indices in the standard order (the sorted WordNet ids, the order of the classifier
heads of timm and torchvision); the list of WordNet ids ships with timm (:class:`timm.data.ImageNetInfo`), so
nothing is downloaded. The sources (:data:`LABEL_SOURCES`, or a CSV file ``file,label``) are described at
:func:`labels_for_files`.

Example:
    >>> labels_for_files(["0_n01440764_tench.jpg", "2_n01484850_shark.jpg"], "wnid")
    [0, 2]
    >>> labels_for_files(collect_images(expand_imagefolders(["val/"])), "imagefolder")
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .io.images import IMAGE_SUFFIXES

__all__ = ["LABEL_SOURCES", "expand_imagefolders", "imagenet_wnids", "labels_for_files", "wnid_of"]

LABEL_SOURCES = ("wnid", "imagefolder")  # or the path of a CSV file
_WNID = re.compile(r"(?<![0-9a-z])(n\d{8})(?![0-9])")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 WordNet ids of ImageNet-1k in class-index order (shipped with timm, no download)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_names())


def _wnid_index(wnid: str, where: str) -> int:
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    if wnid not in index:
        raise ValueError(
            f"{where}: WordNet id {wnid!r} is not one of the 1,000 ImageNet-1k classes "
            f"(e.g. 'n01440764' is class 0, tench)."
        )
    return index[wnid]


def wnid_of(name: str | os.PathLike) -> str | None:
    """The WordNet id (``n`` and 8 digits) in a file name, e.g. ``12_n01440764_tench.jpg`` -> ``n01440764``."""
    found = _WNID.search(Path(name).stem)
    return found.group(1) if found else None


def expand_imagefolders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """``paths`` with every folder that holds no image files itself replaced by its subfolders (sorted):
    an ImageFolder root becomes its class folders, ready for :func:`~diffinv.io.collect_images`."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file()):
            subfolders = sorted(p for p in path.iterdir() if p.is_dir())
            expanded += subfolders or [path]  # an empty folder: collect_images says so
        else:
            expanded.append(path)
    return expanded


def labels_for_files(files: Sequence[str | os.PathLike], source: str | os.PathLike) -> list[int]:
    """The true class index of each image file.

    Args:
        files: the image files, in the order of the images.
        source: ``"wnid"``: the WordNet id in the file name, e.g. ``123_n01440764_tench.jpg`` -> 0 (the naming of
            ``imagenet-sample`` folders and ImageNet's own validation files). ``"imagefolder"``: the name of the
            file's folder (``root/CLASS/file.jpg``, torchvision's ``ImageFolder`` layout): WordNet ids when every
            folder is named by one, else the folders in sorted order are classes 0, 1, 2, ... Or the path of a CSV
            file with the columns ``file,label`` (a header line ``file,label`` is optional): ``file`` is the image's
            path as given, its path relative to the CSV's folder, or its file name; ``label`` a class index or a
            WordNet id.

    Returns:
        One class index per file.

    Raises:
        ValueError: a file name without a WordNet id, an unknown WordNet id, a file the CSV does not
            list, a CSV row that is not ``file,label`` or whose label is neither an index nor a WordNet id,
            a file listed twice with different labels, an unknown ``source``.
        FileNotFoundError: the CSV file does not exist.
    """
    files = [Path(f) for f in files]
    text = os.fspath(source)
    if text == "wnid":
        labels = []
        for f in files:
            wnid = wnid_of(f)
            if wnid is None:
                raise ValueError(
                    f"image {f.name!r} has no WordNet id in its name; expected names like "
                    f"'123_n01440764_tench.jpg' (or give a CSV file,label)."
                )
            labels.append(_wnid_index(wnid, f"image {f.name!r}"))
        return labels
    if text == "imagefolder":
        classes = [f.parent.name for f in files]
        if all(_WNID.fullmatch(c) for c in classes):
            return [_wnid_index(c, f"folder {str(f.parent)!r}") for c, f in zip(classes, files)]
        order = {c: i for i, c in enumerate(sorted(set(classes)))}
        return [order[c] for c in classes]
    if Path(text).suffix.lower() == ".csv" or Path(text).exists():
        return _labels_from_csv(files, Path(text))
    raise ValueError(
        f"labels {text!r}: expected 'wnid', 'imagefolder' or the path of a CSV file with columns file,label."
    )


def _labels_from_csv(files: list[Path], csv_path: Path) -> list[int]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV file {str(csv_path)!r} does not exist.")
    table: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise ValueError(
                    f"labels CSV {str(csv_path)!r} line {number}: expected 2 columns file,label, "
                    f"got {len(row)}: {row!r}."
                )
            name, label = (cell.strip() for cell in row)
            if number == 1 and (name.lower(), label.lower()) == ("file", "label"):
                continue  # the header
            where = f"labels CSV {str(csv_path)!r} line {number}"
            if label.isdigit():
                value = int(label)
            elif _WNID.fullmatch(label):
                value = _wnid_index(label, where)
            else:
                raise ValueError(
                    f"{where}: label {label!r} is neither a class index (0, 1, ...) nor a WordNet id (n01440764)."
                )
            if table.get(name, value) != value:
                raise ValueError(f"{where}: {name!r} is listed twice, with labels {table[name]} and {value}.")
            table[name] = value
    labels, missing = [], []
    for f in files:
        keys = [str(f), f.as_posix(), f.name]
        try:
            keys.insert(1, f.resolve().relative_to(csv_path.parent.resolve()).as_posix())
        except ValueError:
            pass
        found = next((table[k] for k in keys if k in table), None)
        if found is None:
            missing.append(f.name)
        labels.append(found)
    if missing:
        raise ValueError(
            f"labels CSV {str(csv_path)!r} has no row for {len(missing)} of the {len(files)} images: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (the file column holds the "
            f"path as given, relative to the CSV's folder, or the file name)."
        )
    return labels
