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
from ..metrics import MIN_IMAGE_SIZE

__all__ = [
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_SIZE",
    "MAX_SEED",
    "MIN_SIZE",
    "Limits",
    "Upload",
    "bounded_int",
    "check_target",
    "check_upload",
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
#: The smallest ``--size``: SSIM's gaussian window is 11 pixels, so a smaller image cannot be scored (skimage's
#: "win_size exceeds image extent", after the work): ``diffinv.metrics.MIN_IMAGE_SIZE``.
MIN_SIZE = MIN_IMAGE_SIZE
UPLOAD_REFUSED = (
    "`--images` (upload): not a file uploaded to this page; upload the image with the page's upload field."
)


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
        targets: the target networks a visitor may name (``--targets``; ``None``: those whose weights are
            installed on this machine, :func:`diffinv.targets.installed_targets`).
    """

    max_size: int = DEFAULT_MAX_SIZE
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    max_steps: int = 100
    max_top: int = 16
    models_dir: Path | None = None
    runs_dir: Path | None = None
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Upload:
    """An image a visitor sent in the upload field, as the page received it (not yet checked).

    Attributes:
        path: the server path the request names (``None``: the request sent no file, e.g. a ``data:`` URL).
        name: the file's name on the visitor's machine, as they sent it (shown cut short).
    """

    path: str | None
    name: str | None = None


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
    """A named image must be one of the bundled photos (a visitor uploads anything else; no server paths); an
    :class:`Upload` or an array passes (the upload is checked where it arrives, :func:`check_upload`)."""
    if image is None or isinstance(image, Upload) or hasattr(image, "__array_interface__"):
        return
    if not isinstance(image, str) or (image.strip() and image not in SAMPLE_PHOTOS):
        raise ValueError(
            f"`--images` {_shown(image)}: expected one of the bundled photos "
            f"({', '.join(SAMPLE_PHOTOS)}) or an upload."
        )


def check_target(name: str, allowed) -> str:
    """``name`` when it is on the server's allow-list of targets (``--targets``), else a ``ValueError`` naming
    ``--target``, the value (cut short) and the allowed names."""
    if not isinstance(name, str) or name.strip() not in allowed:
        raise ValueError(
            f"`--target` {_shown(name)}: not a target of this server; expected one of "
            f"{', '.join(allowed) or '(none)'} (the server's --targets)."
        )
    return name.strip()


def check_upload(upload: Upload, folder: str | os.PathLike, uploaded) -> Path:
    """The real path of ``upload`` when it names a file that this server received through its upload route:
    a path in ``uploaded`` (the paths the route wrote) that is a regular file under ``folder`` (the upload
    folder; symlinks followed). Anything else, a server path above all, gets one message that shows no path.

    Raises:
        ValueError: naming the upload field (``--images``).
    """
    path = upload.path if isinstance(upload, Upload) else None
    if not isinstance(path, str) or not path or "\x00" in path or path not in uploaded:
        raise ValueError(UPLOAD_REFUSED)
    real = inside(folder, path)
    if not _is(real, "file"):
        raise ValueError(UPLOAD_REFUSED)
    return real


def inside(root: Path | None, name: str) -> Path | None:
    """``name`` resolved under ``root`` (symlinks and ``..`` followed), or ``None`` when there is no root, the
    name is empty, or the resolved path leaves the root. Whether the path exists is the caller's to check."""
    if root is None or not isinstance(name, str) or not name.strip() or "\x00" in name:
        return None
    try:
        base = Path(os.path.realpath(root))
        path = Path(os.path.realpath(base / Path(name.strip()).expanduser()))
    except (OSError, ValueError, RuntimeError):  # a name too long for the system, a loop of links
        return None
    return path if path == base or path.is_relative_to(base) else None


def _is(path: Path | None, kind: str) -> bool:
    """``path.is_file()`` / ``path.is_dir()``, false where the system refuses the name (``File name too long``:
    the error would show it in full)."""
    try:
        return path is not None and (path.is_file() if kind == "file" else path.is_dir())
    except (OSError, ValueError):
        return False


def resolve_weights(value: str, limits: Limits) -> str:
    """``--weights``: ``default``, ``random:SEED`` (seed in ``0 .. 2**32 - 1``) as they are, or a file name
    resolved under ``limits.models_dir`` (its real path)."""
    text = (value or "").strip() or "default"
    if text == "default":
        return text
    if text.startswith("random:"):
        seed = bounded_int(text[len("random:") :], "--weights random:SEED", 0, MAX_SEED, "the seed")
        return f"random:{seed}"
    path = inside(limits.models_dir, text)
    if not _is(path, "file"):
        raise ValueError(
            f"`--weights` {_shown(text)}: no such weights file in this server's models folder "
            f"(--models-dir); expected default, random:SEED or the name of a state-dict file there."
        )
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
    if not _is(path, "dir"):
        names = f"{', '.join(builtin)} or " if builtin else ""
        raise ValueError(
            f"`{flag}` {_shown(text)}: no such folder in this server's models folder (--models-dir); "
            f"expected {names}the name of a folder there."
        )
    return str(path)


def run_folder(value: str | None, limits: Limits) -> Path:
    """The Runs tab's folder: a name resolved under ``limits.runs_dir`` that holds a ``manifest.json`` (itself
    under the root). A missing folder, one outside the root and one without a manifest get the same message."""
    text = (value or "").strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError("`--out`: no run folder given; enter the name of a `diffinv bench` run folder.")
    path = inside(limits.runs_dir, text)
    manifest = served_file(path, "manifest.json", limits.runs_dir) if _is(path, "dir") else None
    if manifest is None:
        raise ValueError(
            f"`--out` {_shown(text)}: no run folder of that name in this server's runs folder "
            f"(--runs-dir); expected the name of a `diffinv bench` run folder there."
        )
    return path


def served_file(folder: Path | None, name: str, root: Path | None) -> Path | None:
    """``folder / name`` when it is a regular file whose real path stays under ``root``, else ``None`` (a
    symlink out of the root, e.g. ``results.md -> /etc/passwd``, is not served)."""
    if folder is None or root is None:
        return None
    path = inside(root, str(folder / name))
    return path if _is(path, "file") else None
