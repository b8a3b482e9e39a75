"""Files: atomic writes (a file appears under its final name only once complete), regular-file checks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "check_regular_file", "cut_short", "write_json"]


def cut_short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, with its length, when it is longer (a 50 MB name is not printed)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a regular file (or a link to one).

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: a folder, a FIFO, a device (``/dev/zero``) or a socket is there: such a file could
            block or never end.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    kind = (
        "a folder"
        if path.is_dir()
        else "a FIFO (named pipe)"
        if path.is_fifo()
        else "a device"
        if path.is_char_device() or path.is_block_device()
        else "a socket"
        if path.is_socket()
        else "a special file"
    )
    raise ValueError(f"{what} {str(path)!r} is not a regular file (it is {kind}); expected a file on disk.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it to ``path`` when the block succeeds.

    The parent folder is created; on an error the temporary file is removed and ``path`` is
    left as it was; a full disk (or quota) is reported as an ``OSError`` that names ``path``. The temporary
    name (per process) keeps the suffix (``.x.PID.tmp.png``) for writers that
    pick the format from it.

    Example:
        >>> with atomic_path("out/grid.png") as tmp:
        ...     image.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # one per writer process
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in _FULL:  # a writer's bare "No space left on device": say which file, and where
            raise OSError(
                err.errno,
                f"{err.strerror or os.strerror(err.errno)}: could not write {str(path)!r}; free "
                f"space on its disk or write elsewhere",
            ) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file too large


def write_json(path: str | os.PathLike, payload) -> Path:
    """Writes ``payload`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return path
