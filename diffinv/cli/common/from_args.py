"""What the subcommands build from their parsed flags: images and labels, the judge, the target, workers, checks.

Each ``*_from_args(args, ...)`` reads the flags of :mod:`~diffinv.cli.common.parser`; the checks run before any
work (a job whose estimated memory does not fit is refused with the estimate: :func:`check_memory_fits`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch

from ...datasets import load_dataset, load_image_files
from ...inverters import OptionError, memory_costs
from ...io import collect_images
from ...jobs.distributed import launch_state, local_workers
from ...jobs.training import TrainConfig, check_training_memory
from ...judge import DEFAULT_JUDGE, Judge
from ...labels import expand_imagefolders, labels_for_files
from ...optimization import EarlyStopping
from ...resources import InsufficientMemoryError, check_job_memory
from ...targets import TargetNetwork
from .argtypes import UsageError, resolve_device
from .method_flags import _usage_error, method_options_from_args

__all__ = [
    "check_decoder_training_fits",
    "check_judge_arg",
    "check_memory_fits",
    "decoder_trainer_from_args",
    "early_stop_from_args",
    "fit_workers",
    "image_count",
    "judge_from_args",
    "labels_from_args",
    "launch_target_and_judge",
    "load_images_and_labels",
    "target_from_args",
    "workers_from_args",
]


def workers_from_args(args: argparse.Namespace, device: torch.device, items: int) -> int:
    """The local processes of ``--workers`` (:func:`~diffinv.jobs.distributed.local_workers`), refused above the
    CPU cores unless ``--force-workers`` (a :class:`UsageError`)."""
    try:
        return local_workers(args.workers, device, items, force=getattr(args, "force_workers", False))
    except ValueError as err:
        raise UsageError(str(err)) from None


def fit_workers(
    args: argparse.Namespace,
    workers: int,
    check: Callable[[int], None],
    allowed: Callable[[int], bool] = lambda n: True,
) -> int:
    """The processes a job runs in, checked against memory by ``check(processes)`` (which raises
    ``InsufficientMemoryError``): ``workers`` as given, or with ``--workers auto`` the most processes up to
    ``workers`` (and ``allowed``) whose estimate fits (each process has its own base)."""
    if args.workers != "auto":
        check(workers)
        return workers
    for n in [n for n in range(workers, 0, -1) if allowed(n)] or [1]:
        try:
            check(n)
            return n
        except InsufficientMemoryError:
            if n == 1:
                raise
    return 1


def _image_paths(args: argparse.Namespace) -> list[str]:
    """The image files of ``--images`` (class sub-folders expanded for ``--labels imagefolder``), at most
    ``--num-images``."""
    paths = expand_imagefolders(args.images) if args.labels == "imagefolder" else args.images
    return collect_images(paths)[: args.num_images]


def image_count(args: argparse.Namespace, default_count: int) -> int:
    """How many images :func:`load_images_and_labels` will load (for the memory check, before loading them)."""
    return len(_image_paths(args)) if args.images else args.num_images or default_count


def load_images_and_labels(args: argparse.Namespace, default_count: int):
    """``(images, names, labels or None, dataset)`` of ``--images`` (every image unless ``--num-images``) or
    ``--dataset`` (``--num-images``, default ``default_count``), with the labels of ``--labels``."""
    if args.labels is not None and not args.images:
        raise UsageError(
            f"`--labels` {args.labels!r} labels the files of `--images`; the built-in dataset "
            f"{args.dataset!r} has "
            + ("its own labels" if args.dataset == "foolbox-imagenet" else "no labels")
            + ". Pass --images or leave --labels out."
        )
    if not args.images:
        images, names, labels = load_dataset(args.dataset, args.size, limit=args.num_images or default_count)
        return images, names, (labels if any(v is not None for v in labels) else None), args.dataset
    paths = _image_paths(args)
    labels = labels_from_args(args, paths)
    images, names = load_image_files(paths, args.size)
    return images, names, labels, "files"


def labels_from_args(args: argparse.Namespace, files) -> list[int | None] | None:
    """The true classes of ``files`` by ``--labels`` (``None`` without it), checked before any work."""
    if args.labels is None:
        return None
    try:
        return labels_for_files(files, args.labels)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"`--labels` {args.labels!r}: {err}") from None


def check_judge_arg(args: argparse.Namespace) -> None:
    """``--judge`` must not be the attacked target (checked before any model is loaded)."""
    if args.judge == args.target:
        raise UsageError(
            f"`--judge` {args.judge!r} is the attacked target (`--target`); the judge must be a network "
            f"the attack never saw, e.g. {DEFAULT_JUDGE} (or --judge none)."
        )


def judge_from_args(args: argparse.Namespace, device: torch.device) -> Judge | None:
    """The judge of ``--judge`` on ``device`` (``None`` for ``--judge none``); never the attacked target."""
    check_judge_arg(args)
    return None if args.judge == "none" else Judge.from_name(args.judge).to(device)


def decoder_trainer_from_args(args: argparse.Namespace, device, **fields) -> TrainConfig:
    """The :class:`~diffinv.jobs.training.TrainConfig` template of :func:`add_decoder_training_args`'s flags
    (``fields``: the job's own, e.g. its images or seed)."""
    return TrainConfig(
        out="",
        layer="",
        max_steps=args.max_steps,
        batch_size=args.train_batch_size,
        hidden_channels=args.hidden_channels,
        mixed_precision=args.mixed_precision,
        model=getattr(args, "model", None),
        device=str(device),
        **fields,
    )  # model: a mapper's VAE


def check_decoder_training_fits(args: argparse.Namespace, trainer: TrainConfig, layers) -> None:
    """The decoders a job trains itself (:func:`add_decoder_training_args`), one per layer, checked against memory
    before any work (:func:`~diffinv.jobs.training.check_training_memory`)."""
    for layer in layers:
        check_training_memory(
            dataclasses.replace(trainer, layer=layer, target=args.target, size=args.size, kind="decoder")
        )


def early_stop_from_args(args: argparse.Namespace):
    """The :class:`~diffinv.optimization.EarlyStopping` of ``--patience``/``--min-delta``, or ``None`` (0)."""
    return EarlyStopping(args.patience, args.min_delta) if args.patience else None


def launch_target_and_judge(args: argparse.Namespace, layers, device: torch.device):
    """``(state, device, main, target, judge)`` of a job of work items: accelerate's state under
    torchrun/accelerate launch (else ``None``) and this process's device, whether this is the main
    process, the target of :func:`target_from_args` and the judge of :func:`judge_from_args` there."""
    state, device = launch_state(device)
    main = state is None or state.is_main_process
    return state, device, main, target_from_args(args, layers, device), judge_from_args(args, device)


def target_from_args(args: argparse.Namespace, layers, device: torch.device):
    """The target of ``--target``/``--weights`` at ``layers``, fed ``--size`` x ``--size`` images, on ``device``."""
    return TargetNetwork.from_name(args.target, layers, weights=args.weights, input_size=(args.size, args.size)).to(
        device
    )


def check_memory_fits(
    args: argparse.Namespace,
    layers,
    methods,
    *,
    images: int,
    batch_size: int | None = None,
    processes: int = 1,
    target: str | None = None,
    size=None,
    input_size=None,
) -> None:
    """Refuses a job whose estimated peak memory does not fit the machine (:func:`diffinv.resources.check_job_memory`:
    an ``InsufficientMemoryError``, exit code 2, with the estimate and the memory available), before any work; each
    method counts what it declares (``Inverter.memory_cost``) with the options of the flags."""
    options = {}
    for method in methods:
        try:
            options.update(method_options_from_args(method, args))
        except OptionError as err:
            raise _usage_error(err) from None
    check_job_memory(
        target or args.target,
        layers,
        size or args.size,
        images=images,
        batch_size=batch_size,
        methods=memory_costs(methods, options),
        input_size=input_size,
        device=resolve_device(getattr(args, "device", "auto")),
        processes=processes,
    )
