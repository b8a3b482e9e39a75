"""What the environment sets: the ``DIFFINV_*`` variables (the image pixel limit among them) and the host
memory available."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from PIL import Image

__all__ = ["ENVIRONMENT_VARIABLES", "available_host_memory", "check_environment", "max_image_pixels"]


_PIXELS_VARIABLE = "DIFFINV_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int | None:
    """The most pixels an image file may have (the decompression-bomb limit): ``DIFFINV_MAX_IMAGE_PIXELS``
    when set (``0``: no limit, ``None``), else the size Pillow refuses (twice ``PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        ValueError: the variable is set to something other than an integer >= 0.
    """
    text = os.environ.get(_PIXELS_VARIABLE)
    if text is None:
        return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"environment variable {_PIXELS_VARIABLE}={text!r}: expected an integer >= 0, the most "
            f"pixels an image file may have (0 for no limit), e.g. {_PIXELS_VARIABLE}=200000000."
        )
    return value or None


#: Every ``DIFFINV_*`` environment variable that diffinv reads (the library, the slow tests, ``.ci/run``), with
#: what it sets; :func:`check_environment` refuses any other (a typo would otherwise be ignored without a word).
ENVIRONMENT_VARIABLES = {
    _PIXELS_VARIABLE: "the most pixels an image file may have (0: no limit)",
    "DIFFINV_SD_PATH": "a Stable Diffusion folder, for the slow tests",
    "DIFFINV_BIGGAN": "BigGAN weights, for the slow tests",
    "DIFFINV_VENV": "the virtual environment of .ci/run",
}


def check_environment() -> None:
    """Checks every ``DIFFINV_*`` environment variable (before any work), so that a bad value is
    reported at once, not when the first image is read, and a misspelt name is not ignored.

    Raises:
        ValueError: a variable has a value that is not what it expects (named, with the value), or a
            ``DIFFINV_*`` variable is not one of :data:`ENVIRONMENT_VARIABLES` (named, with the closest known name).
    """
    max_image_pixels()
    unknown = sorted(
        name for name in os.environ if name.upper().startswith("DIFFINV_") and name not in ENVIRONMENT_VARIABLES
    )
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name.upper(), ENVIRONMENT_VARIABLES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        shown = name if len(name) <= 60 else f"{name[:60]}..."
        raise ValueError(
            f"environment variable {shown}={_shown(os.environ[name])} is not one diffinv reads; {hint}"
            f"The known ones are {', '.join(ENVIRONMENT_VARIABLES)}. Rename or unset it (`unset {shown}`)."
        )


def _shown(text: str, limit: int = 60) -> str:
    """``text`` as ``repr`` would show it, cut to about ``limit`` characters (a 50 MB value is not printed)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def available_host_memory() -> int:
    """Bytes of host memory available now: psutil's, else /proc/meminfo's ``MemAvailable``, within a cgroup limit."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            text = Path("/proc/meminfo").read_text()
            available = int(text.split("MemAvailable:")[1].split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return min(available, max(0, int(limit) - usage))
    return available
