"""The command line's one vocabulary: every flag that means the same thing is defined here once.

| flag | meaning |
|---|---|
| ``--out``/``-o`` | the output (a folder; ``extract``: a ``.safetensors`` file) |
| ``--images`` | image files and/or folders (every image file in a folder, sorted) |
| ``--size`` | images are resized and center-cropped to SIZE x SIZE (default 128 everywhere) |
| ``--target``/``--weights`` | the network and its weights (``default``, ``random:SEED`` or a file) |
| ``--method``/``--methods`` | one method / several, from the registry, or a hybrid ``START+diffusion`` |
| ``--init``/``--strength`` | diffusion's hybrid start (a method's estimate or an image file) and img2img strength |
| ``--seed``/``--seeds`` | one seed / several |
| ``--iterations`` | optimization iterations of a white-box method |
| ``--steps`` | sampler steps K of the diffusion chain |
| ``--stride`` | keep every STRIDE-th video frame |
| ``--batch-size`` | images processed together (bench items; the global batch of a training step) |
| ``--device`` | ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` |
| ``--overwrite`` | start a fresh run in an output folder that holds another run |
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..inverters import INVERTERS
from ..inverters.diffusion import HYBRID_STRENGTH
from ..inverters.gan import DEFAULT_RESTARTS, DEFAULT_TRUNCATION
from ..models.gan import GANFilesNotFoundError, biggan_files, is_random_biggan
from ..models import resolve_model_dir
from ..models.learned import folder_kind
from ..optimization import EarlyStopping
from ..pipelines.definitions import DEFINITIONS, ModelFilesNotFoundError, check_model_dir, is_local_path
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
    "add_method_args",
    "add_out_arg",
    "add_overwrite_arg",
    "add_size_arg",
    "add_target_args",
    "check_out_dir",
    "check_out_file",
    "inverter_factory",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "resolve_device",
    "unit_float",
]

DEFAULT_SIZE = 128
METHODS = tuple(INVERTERS)
START_METHODS = ("decoder", "mapper", "dip", "gan")  # estimates the diffusion chain can refine (--init)
HYBRID_METHODS = tuple(f"{start}+diffusion" for start in START_METHODS)


class UsageError(ValueError):
    """A command-line argument is wrong: reported as ``diffinv CMD: error: ...`` with exit code 2."""


# ---------------------------------------------------------------------- argument types (checked by argparse)
def _number(cast: type, expected: str, accept) -> "Callable[[str], int | float]":
    """An argparse ``type``: ``cast(text)`` if ``accept(value)``, else argparse's error (exit code 2):
    ``argument --size: expected a positive integer (>= 1), got 0``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


positive_int = _number(int, "a positive integer (>= 1)", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number > 0", lambda v: 0 < v < math.inf)
non_negative_float = _number(float, "a finite number >= 0", lambda v: 0 <= v < math.inf)
unit_float = _number(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


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


def add_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=positive_int, default=DEFAULT_SIZE,
                   help=f"images are resized and center-cropped to SIZE x SIZE (default {DEFAULT_SIZE})")


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
                        "(faster on CPU than one process on every core); auto: one per core on CPU, 1 on a GPU. "
                        f"The same results; under torchrun/accelerate launch it is ignored (default {default})")


def add_early_stop_args(p: argparse.ArgumentParser, patience: int, min_delta: float) -> None:
    """``--patience``/``--min-delta``: stop an image when its loss has stopped improving (0: off)."""
    p.add_argument("--patience", type=non_negative_int, default=patience,
                   help="pixel, dip, diffusion: stop an image when its loss has not fallen by --min-delta (relative) "
                        f"for this many iterations; 0: run every iteration (default {patience})")
    p.add_argument("--min-delta", type=_number(float, "a number in [0, 1)", lambda v: 0 <= v < 1), default=min_delta,
                   help=f"the relative fall of the loss that counts as an improvement (default {min_delta})")


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
    p.add_argument("--compile", action="store_true",
                   help="pixel, dip, diffusion: run the networks through torch.compile (the same results; the first "
                        "iterations compile, up to a minute on CPU, where the compiled networks were not faster)")
    p.add_argument("--init", default=None, metavar="decoder|mapper|dip|gan|IMAGE",
                   help="diffusion: start the chain from another method's estimate (its own flags: --decoder, --mapper, "
                        "--gan) or from an image file, noised to --strength and refined (a hybrid; `--method "
                        "START+diffusion` means the same)")
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


def _hybrid_start(init: str, args: argparse.Namespace):
    """``target -> start`` for ``--init``: a method of :data:`START_METHODS` or an image file."""
    if init in START_METHODS:
        if init == "mapper":  # the start is the mapper's own estimate; --strength is the refinement's
            args = argparse.Namespace(**{**vars(args), "strength": 0.0})
        return _single_factory(init, args)
    if init in INVERTERS:
        raise UsageError(f"`--init` {init!r}: the chain starts from one of {', '.join(START_METHODS)} or an image file.")
    path = Path(init).expanduser()
    if not path.is_file():
        raise UsageError(f"`--init` {init!r} is neither one of {', '.join(START_METHODS)} nor an existing image file.")
    return lambda target: str(path)


def inverter_factory(name: str, args: argparse.Namespace):
    """``target -> Inverter`` for a method name (or a hybrid ``START+diffusion``) and the command-line options."""
    init = getattr(args, "init", None)
    if name in HYBRID_METHODS:
        start = name.split("+")[0]
        if init is not None and init != start:
            raise UsageError(f"`--method` {name!r} starts from {start}, but `--init` is {init!r}; give one of them.")
        name, init = "diffusion", start
    elif name not in INVERTERS:
        raise UsageError(f"`--method` {name!r} is not one of {', '.join(METHODS + HYBRID_METHODS)}.")
    if init is not None and name != "diffusion":
        raise UsageError(f"`--init` {init!r} starts the diffusion chain; it does not apply to `--method {name}`.")
    make = _single_factory(name, args)
    if init is None:
        return make
    strength = HYBRID_STRENGTH if args.strength is None else args.strength
    if strength == 0:
        raise UsageError("`--strength` 0 with `--init`: the start must be noised into the chain; expected (0, 1].")
    start = _hybrid_start(init, args)
    return lambda target: make(target, start=start(target), strength=strength)


def _single_factory(name: str, args: argparse.Namespace):
    """``target, **extra -> Inverter`` for one registered method."""
    cls = INVERTERS[name]
    check_model(getattr(args, "model", None))
    iterations = getattr(args, "iterations", None)
    device = resolve_device(getattr(args, "device", "auto"))
    if name == "diffusion":
        if not args.model:
            raise UsageError("`--method diffusion` needs `--model PATH` (a diffusers Stable Diffusion folder; "
                             "`--model tiny` builds random weights to try the path).")
        kwargs = {"model": args.model, "device": str(device)}
        if args.prompt:
            kwargs["prompt"] = args.prompt
        if args.steps:
            kwargs["num_inference_steps"] = args.steps
        if iterations is not None:
            kwargs["num_iterations"] = iterations
        if getattr(args, "compile", False):
            kwargs["compile"] = True
    elif name == "decoder":
        if not args.decoder:
            raise UsageError("`--method decoder` needs `--decoder DIR` (from `diffinv train-decoder`).")
        resolve_model_dir(args.decoder, kind="decoder")
        kwargs = {"decoder": args.decoder}
    elif name == "mapper":
        if not args.mapper:
            raise UsageError("`--method mapper` needs `--mapper DIR` (from `diffinv train-mapper`).")
        resolve_model_dir(args.mapper, kind="mapper")
        kwargs = {"mapper": args.mapper, "model": args.model, "strength": args.strength or 0.0,
                  "prompt": args.prompt or ""}
        if args.steps:
            kwargs["num_inference_steps"] = args.steps
    elif name == "gan":
        check_gan(args.gan)
        kwargs = {"gan": args.gan, "truncation": args.truncation, "restarts": args.restarts}
        if iterations is not None:
            kwargs["iterations"] = iterations
    else:
        kwargs = {} if iterations is None else {"iterations": iterations}
        if getattr(args, "compile", False):
            kwargs["compile"] = True
    return lambda target, **extra: cls(target, **kwargs, **extra)


def target_from_args(args: argparse.Namespace, layers, device: torch.device):
    """The target of ``--target``/``--weights`` at ``layers``, fed ``--size`` x ``--size`` images, on ``device``."""
    return TargetNetwork.from_name(args.target, layers, weights=args.weights,
                                   input_size=(args.size, args.size)).to(device)
