"""Claims on the work items of a run folder: a process runs an item only while it holds the item's claim, an
exclusive ``flock`` on ``RUN_FOLDER/.claims/NNNNNN`` (:class:`ItemClaims`), so that no item runs twice and a
second command on the same folder joins the run. A process that dies releases its claims with it (the kernel
drops its locks). Work that is not records of one store (the clips of a several-clip video run) is claimed the
same way by :func:`claimed`. The folder of claims is removed by the last process to finish.

Example:
    >>> for clip in claimed(out_dir, clips, state=state, finished=done):
    ...     invert(clip)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .store import RunSettingsError

__all__ = ["ItemClaims", "claimed"]


CLAIMS = ".claims"  # the folder of claim files inside a run folder
ACTIVE = ".active"  # every process working on the run holds a shared lock on it


class ItemClaims:
    """Claims on the work items of a run folder: one lock file per item, ``flock``-ed exclusively
    by the process that runs the item, and released when it is done (or when the process dies).

    Args:
        folder: the run folder.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder) / CLAIMS
        self.locking = True
        self._active = self._join()

    def _join(self) -> int | None:
        """A shared lock on ``.active`` (whoever holds it exclusively may remove the folder)."""
        while True:
            if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
                raise RunSettingsError(
                    f"{str(self.folder)!r} is not a folder of claims (a link or a file); remove it "
                    f"when no process works on the run."
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / ACTIVE
            try:
                fd = _open_plain(path)
            except FileNotFoundError:
                continue  # the last process of a run just removed the folder
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as err:  # ENOLCK, EOPNOTSUPP: a file system without locks
                os.close(fd)
                self.locking = False
                warnings.warn(
                    f"the file system of {str(self.folder.parent)!r} does not support file locks ({err}): "
                    f"the items are not claimed, so only one process may work on this run folder at a "
                    f"time",
                    stacklevel=3,
                )
                return None
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # locked a file that was removed meanwhile: join again

    def acquire(self, index: int, *, wait: bool = False, prefix: str = "") -> int | None:
        """Claims item ``index`` (of the list named ``prefix``: a job with several lists of items, e.g. its
        trainings and its attacks): a file descriptor holding the claim, or ``None`` when another process
        holds it (``wait``: block until it lets go instead). Without file locks, every item is this process's."""
        if not self.locking:
            return -1
        fd = _open_plain(self.folder / f"{prefix}{index:06d}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def release(fd: int) -> None:
        """Lets go of a claim (the item is finished, or given up)."""
        if fd >= 0:
            os.close(fd)

    def leave(self) -> None:
        """This process stops working on the run (its shared lock on ``.active`` goes)."""
        if self._active is not None:
            os.close(self._active)
            self._active = None

    def close(self) -> bool:
        """Leaves the run and removes the claims folder if no other process works on it; whether it did."""
        if not self.locking:
            return False
        if self._active is None:
            self._active = self._join()
        try:
            fcntl.flock(self._active, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.leave()
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        self.leave()
        return True


def _open_plain(path: Path) -> int:
    """Opens (creates) a claim file to lock it; nothing is read from it or written into it. A symbolic
    link or anything but a regular file in its place is refused."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise RunSettingsError(
            f"claim file {str(path)!r} cannot be opened ({err}); the claims of a run folder are "
            f"plain files: remove {str(path.parent)!r} when no process works on the run."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunSettingsError(
            f"claim file {str(path)!r} is not a regular file; the claims of a run folder are plain "
            f"files: remove {str(path.parent)!r} when no process works on the run."
        )
    return fd


def claimed(
    folder: str | os.PathLike,
    items: Sequence,
    *,
    state=None,
    finished: Callable[[Any], bool] = lambda item: False,
    prefix: str = "",
) -> Iterator:
    """The runner's claims for work that is not records of one store (the clips of a several-clip video run,
    each its own run folder, which resumes itself): yields each item of ``items`` this process claims, while it
    holds the claim (``RUN_FOLDER/.claims``: see :class:`ItemClaims`). First the items nobody holds (odd
    processes of a launch go from the end), then, waiting for each, those another process held and did not
    leave ``finished`` (it died). The last process to finish removes the claims."""
    claims = ItemClaims(folder)
    order = list(enumerate(items))
    if state is not None and state.process_index % 2:
        order.reverse()
    held = []
    try:
        for wait, todo in ((False, order), (True, held)):
            for index, item in list(todo):
                fd = claims.acquire(index, wait=wait, prefix=prefix)
                if fd is None:
                    held.append((index, item))
                    continue
                try:
                    if not (wait and finished(item)):
                        yield item
                finally:
                    claims.release(fd)
    finally:
        if state is not None:
            claims.leave()
            state.wait_for_everyone()
            if state.is_main_process:
                claims.close()
        else:
            claims.close()
