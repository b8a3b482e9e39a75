"""The split of a folder of images for the atlas (:func:`split_images`): the images the models train on and the
evaluation images, disjoint and deterministic by a seed (:class:`AtlasSplit`, recorded in the manifest), and a
method's training template resolved for the split (:func:`training_template`).

Example:
    >>> split = split_images(collect_images(["photos/"]), 0.8, seed=0)
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..targets import TargetNetwork
from .training import TrainConfig, with_resolved_precision

__all__ = ["AtlasSplit", "split_images", "training_template"]

# At most this many training images validate each decoder (``TrainConfig.val_fraction`` of them, held out).
_MAX_VAL_IMAGES = 16


@dataclass(frozen=True)
class AtlasSplit:
    """Which images train the decoders and which are evaluated: disjoint, each sorted.

    Attributes:
        train: image files the decoders train on.
        evaluation: image files the atlas inverts and scores.
        train_split: what was asked (a fraction of the folder, or a count of images).
        seed: the seed of the shuffle that made the split.
    """

    train: tuple[str, ...]
    evaluation: tuple[str, ...]
    train_split: float | int
    seed: int

    def settings(self) -> dict:
        """For the manifest: the request, the seed and both lists."""
        return {
            "train_split": self.train_split,
            "seed": self.seed,
            "train": list(self.train),
            "evaluation": list(self.evaluation),
        }


def split_images(
    files: Sequence[str | os.PathLike], train_split: float | int, *, seed: int = 0, num_images: int | None = None
) -> AtlasSplit:
    """Splits ``files`` into training and evaluation images, deterministically by ``seed``.

    The files are shuffled by ``seed``; the first ``train_split`` of them (a fraction in [0, 1), or a
    count) train the decoders, and the next ``num_images`` (default: all the others) are evaluated,
    so that a smaller ``num_images`` draws its evaluation images across the whole folder.

    Raises:
        ValueError: a duplicate file, a ``train_split`` out of range, or no evaluation image left.
    """
    files = [str(f) for f in files]
    if len(set(files)) != len(files):
        raise ValueError("`files` lists some image twice; the split would not be disjoint.")
    if isinstance(train_split, bool) or not isinstance(train_split, (int, float)):
        raise ValueError(f"`train_split` must be a fraction in [0, 1) or a count of images, got {train_split!r}.")
    if isinstance(train_split, float):
        if not 0 <= train_split < 1:
            raise ValueError(f"`train_split` {train_split!r}: a fraction must be in [0, 1) (a count is an integer).")
        count = round(train_split * len(files))
    else:
        count = train_split
    if not 0 <= count < len(files):
        raise ValueError(
            f"`train_split` {train_split!r} leaves no evaluation image among the {len(files)} images; "
            f"expected fewer than {len(files)} training images."
        )
    if num_images is not None and num_images < 1:
        raise ValueError(f"`num_images` must be a positive integer, got {num_images!r}.")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    train, rest = order[:count], order[count:]
    evaluation = rest[:num_images] if num_images is not None else rest
    return AtlasSplit(tuple(sorted(train)), tuple(sorted(evaluation)), train_split, int(seed))


def training_template(
    template: TrainConfig, kind: str, target: TargetNetwork, split: AtlasSplit, size: int, progress: bool
) -> TrainConfig:
    """A method's training template, resolved for the atlas: its kind, the target, the size, and the split's
    training images; without validation sources in the template, ``val_fraction`` of them (at most 16, evenly
    spread) are held out to validate it (still none of the evaluation images)."""
    train_files, val = list(split.train), []
    explicit = template.val_images or template.val_videos or template.val_samples
    if not explicit and template.val_fraction > 0 and len(train_files) >= 2:
        held = min(_MAX_VAL_IMAGES, max(1, round(template.val_fraction * len(train_files))))
        val = train_files[:: -(-len(train_files) // held)][:held]
        train_files = [f for f in train_files if f not in set(val)]
    return with_resolved_precision(
        dataclasses.replace(
            template,
            target=target.name,
            weights=target.weights,
            size=size,
            images=train_files,
            val_images=val or template.val_images,
            kind=kind,
            progress=progress,
        )
    )
