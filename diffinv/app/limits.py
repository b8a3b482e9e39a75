"""What a visitor of ``diffinv app`` may ask of the server: bounds on sizes, iterations, seeds and counts, and
the folders that files may come from (``--models-dir``, ``--runs-dir``).

The app may listen on every interface (``--host 0.0.0.0``), so every field a visitor sends is checked here
before any work: numbers are integers within the server's bounds (a clear message, never a raw overflow),
and a file or folder name is resolved (symlinks and ``..`` followed) and must stay under its root. A missing
name and one that leaves its root get the same message, so the page tells nothing about the server's files.

Example:
    >>> limits = Limits(max_size=256, models_dir=Path("models"))
    >>> bounded_int(300, "--size", 8, limits.max_size, "this server's --max-size")
    Traceback (most recent call last):
    ValueError: `--size` expected an integer from 8 to 256 (this server's --max-size), got 300
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import SAMPLE_PHOTOS

__all__ = [
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_SIZE",
    "MAX_SEED",
    "Limits",
    "bounded_int",
    "check_photo",
    "inside",
    "resolve_folder",
    "resolve_weights",
    "run_folder",
    "served_file",
]

#: Defaults of ``--max-size`` and ``--max-iterations``: a 512 x 512 pixel run of 1000 iterations at
#: EfficientNet-Lite0's deepest default layer costs about 5 CPU-minutes on one core and about 0.6 GB above the
#: app's own 1.1 GB (README, "Browser app"); larger asks belong on the command line, where the user owns the
#: machine.
DEFAULT_MAX_SIZE = 512
DEFAULT_MAX_ITERATIONS = 1000
MAX_SEED = 2**32 - 1
MIN_SIZE = 8


@dataclass(frozen=True)
class Limits:
    """The server's bounds on what one visitor's run may ask for.

    Attributes:
        max_size: largest ``--size`` (pixels per side).
        max_iterations: largest ``--iterations`` (also the method's own default when the field is empty).
        max_steps: largest ``--steps`` of the diffusion chain.
        max_top: largest number of channels of the Channels tab.
        models_dir: the folder that weight files and model / decoder / mapper folders come from (``None``: no
            files, only ``default`` / ``random:SEED`` and the built-in model definitions).
        runs_dir: the folder that the Runs tab serves run folders from (``None``: none).
    """

    max_size: int = DEFAULT_MAX_SIZE
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    max_steps: int = 100
    max_top: int = 16
    models_dir: Path | None = None
    runs_dir: Path | None = None


def _shown(value) -> str:
    """A visitor's value as a message shows it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bounded_int(value, flag: str, low: int, high: int, why: str = "") -> int:
    """``value`` (an int, an integral float or an integer literal) as an int in ``[low, high]``.

    Raises:
        ValueError: naming ``flag``, the value and the range, for a non-integer, a non-finite number or a value
            out of range (never an ``OverflowError``).
    """
    expected = f"`{flag}` expected an integer from {low} to {high}" + (f" ({why})" if why else "")
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:  # not an integer literal, or too many digits to convert
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{expected}, got {_shown(value)}")
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{expected}, got {_shown(value)}")
        if abs(number) > 2**63:
            raise ValueError(f"{expected}, got {number:g}")
        number = int(number)
    if not low <= number <= high:
        shown = str(number) if abs(number) < 10**18 else ("-" if number < 0 else "") + "a number above 10**18"
        raise ValueError(f"{expected}, got {shown}")
    return number


def check_photo(image) -> None:
    """A named image must be one of the bundled photos (a visitor uploads anything else; no server paths)."""
    if isinstance(image, str) and image.strip() and image not in SAMPLE_PHOTOS:
        raise ValueError(f"`--images` {_shown(image)}: expected one of the bundled photos "
                         f"({', '.join(SAMPLE_PHOTOS)}) or an upload.")


def inside(root: Path | None, name: str) -> Path | None:
    """``name`` resolved under ``root`` (symlinks and ``..`` followed), or ``None`` when there is no root, the
    name is empty, or the resolved path leaves the root. Whether the path exists is the caller's to check."""
    if root is None or not isinstance(name, str) or not name.strip() or "\x00" in name:
        return None
    base = Path(os.path.realpath(root))
    path = Path(os.path.realpath(base / Path(name.strip()).expanduser()))
    return path if path == base or path.is_relative_to(base) else None


def resolve_weights(value: str, limits: Limits) -> str:
    """``--weights``: ``default``, ``random:SEED`` (seed in ``0 .. 2**32 - 1``) as they are, or a file name
    resolved under ``limits.models_dir`` (its real path)."""
    text = (value or "").strip() or "default"
    if text == "default":
        return text
    if text.startswith("random:"):
        seed = bounded_int(text[len("random:"):], "--weights random:SEED", 0, MAX_SEED, "the seed")
        return f"random:{seed}"
    path = inside(limits.models_dir, text)
    if path is None or not path.is_file():
        raise ValueError(f"`--weights` {_shown(text)}: no such weights file in this server's models folder "
                         f"(--models-dir); expected default, random:SEED or the name of a state-dict file there.")
    return str(path)


def resolve_folder(value: str | None, flag: str, limits: Limits, builtin: tuple[str, ...] = ()) -> str | None:
    """A model / decoder / mapper folder field: empty -> ``None``, a built-in name as it is, or a folder name
    resolved under ``limits.models_dir`` (its real path)."""
    text = (value or "").strip() if isinstance(value, str) else value
    if not text:
        return None
    if text in builtin:
        return text
    path = inside(limits.models_dir, text)
    if path is None or not path.is_dir():
        names = f"{', '.join(builtin)} or " if builtin else ""
        raise ValueError(f"`{flag}` {_shown(text)}: no such folder in this server's models folder (--models-dir); "
                         f"expected {names}the name of a folder there.")
    return str(path)


def run_folder(value: str | None, limits: Limits) -> Path:
    """The Runs tab's folder: a name resolved under ``limits.runs_dir`` that holds a ``manifest.json`` (itself
    under the root). A missing folder, one outside the root and one without a manifest get the same message."""
    text = (value or "").strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError("`--out`: no run folder given; enter the name of a `diffinv bench` run folder.")
    path = inside(limits.runs_dir, text)
    manifest = served_file(path, "manifest.json", limits.runs_dir) if path is not None and path.is_dir() else None
    if manifest is None:
        raise ValueError(f"`--out` {_shown(text)}: no run folder of that name in this server's runs folder "
                         f"(--runs-dir); expected the name of a `diffinv bench` run folder there.")
    return path


def served_file(folder: Path | None, name: str, root: Path | None) -> Path | None:
    """``folder / name`` when it is a regular file whose real path stays under ``root``, else ``None`` (a
    symlink out of the root, e.g. ``results.md -> /etc/passwd``, is not served)."""
    if folder is None or root is None:
        return None
    path = inside(root, str(folder / name))
    return path if path is not None and path.is_file() else None
