"""Argument types and validators: what argparse checks while parsing, and what a command checks before any work.

The ``type=`` functions give argparse's own error (``argument --size: expected a positive integer (>= 1), got
0``, exit code 2); the checks of output locations and of ``--device`` raise :class:`UsageError`, which the
command line reports as ``diffinv CMD: error: ...`` (exit code 2). A list flag (``nargs="+"``) takes each value
once (:func:`check_unique_lists`).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ...compilation import MODES as COMPILE_MODES
from ...io import cut_short
from ...metrics import MIN_IMAGE_SIZE

__all__ = [
    "MAX_SEED",
    "UsageError",
    "check_out_dir",
    "check_out_file",
    "check_unique_lists",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "resolve_device",
    "seed_int",
    "unit_float",
]


class UsageError(ValueError):
    """A command-line argument is wrong: reported as ``diffinv CMD: error: ...`` with exit code 2."""


def _compile_mode(text: str) -> str:
    """``--compile MODE``: one of :data:`~diffinv.compilation.MODES`."""
    if text not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(
            f"invalid mode {cut_short(text)!r}; expected one of {', '.join(COMPILE_MODES)} "
            f"(or --compile alone for the default mode)"
        )
    return text


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


_positive_int_or_auto = _number(int, "a positive integer (>= 1) or auto", lambda v: v >= 1)


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int_or_auto(text)


_workers.__name__ = _positive_int_or_auto.__name__


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
