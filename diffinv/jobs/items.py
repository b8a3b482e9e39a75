"""The one job protocol: the work items of every job (bench, atlas, audit, video) and the runner of them.

A job (:class:`Job`) lists its work items, typed dataclasses, in a fixed order (the same list for the
same settings), says which records each item writes (their keys) and how one item becomes its records;
:func:`run_job` and :class:`WorkRunner` do the rest:

* **resume**: items whose records are all in the run store (:mod:`diffinv.jobs.store`) are done;
* **claims**: a process runs an item only while it holds the item's claim, an exclusive ``flock`` on
  ``RUN_FOLDER/.claims/NNNNNN`` (:class:`ItemClaims`). Every process that works on the folder takes
  claims: the processes of a ``torchrun``/``accelerate launch`` run and independent commands started
  on the same ``--out`` alike, so no item runs twice and a second command *joins* the run, taking the
  items nobody holds. A process that dies releases its claims with it (the kernel drops its locks): a
  stale claim is never waited for. After taking a claim, a process reads the records appended since
  (:meth:`~diffinv.jobs.store.RunStore.new_records`) and skips the item if another process finished it.
  When a process has gone through the list, it waits for the items other processes hold and runs
  those whose holder died before finishing them; so every process returns the whole run.
* **together**: an item that every process of a launch works on at once (the data-parallel training of a
  decoder or a mapper, :class:`TrainingItem`) is claimed by the main process, which tells the others
  which item it holds (:meth:`WorkRunner.run_together`); independent commands still never run it twice;
* **progress**: one bar per process;
* **merge**: :func:`merge_records` keeps one record per item of the run (the last written), in the settings'
  order; records of items that are not in the run are left out, and both are said.

Claims are ``flock`` locks: they hold between the processes of one machine and, on a shared file
system that supports them (NFSv4, Lustre with ``-o flock``), between machines. The folder of claims
is removed by the last process to finish.

The items of each job: :class:`~diffinv.jobs.bench.BenchItem`; :class:`~diffinv.jobs.audit.UtilityItem`,
:class:`~diffinv.jobs.audit.AttackItem`; :class:`~diffinv.jobs.video.WindowItem`; and the trainings of
atlas and audit, :class:`TrainingItem` (here). Work that is not records of one store (the clips of a
several-clip video run, each its own run folder) is claimed the same way by :func:`claimed`.

The helpers that the bench and the audit use on each item are here too: the shared part of the manifest
(:func:`item_settings`), a record's scores of a reconstruction (:func:`image_scores` of
:func:`~diffinv.metrics.reconstruction_scores`) and a per-layer
feature cache (:class:`LayerCache`).

Example:
    >>> runner = run_job(job, store, job.items(), state=state, show=True)
    >>> runner = WorkRunner(store, work, item_keys, key, state=state)  # the same, by hand
    >>> runner.run(run_one, desc="benchmark", show=True, describe=str)
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..io import pixels_fingerprint
from .distributed import process_device
from .store import RunSettingsError, RunStore

__all__ = [
    "ItemClaims",
    "Job",
    "claimed",
    "LayerCache",
    "TrainingItem",
    "WorkRunner",
    "image_label",
    "image_scores",
    "item_settings",
    "merge_records",
    "place",
    "record_key",
    "run_job",
]

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


class WorkRunner:
    """Runs the unfinished work items of a run store, each in one process only (see the module).

    Args:
        store: the run store (its records say what is done).
        work: every work item, in a fixed order (the same for the same settings).
        item_keys: ``item -> [key, ...]``: the keys of the records the item writes.
        key: ``record -> key``.
        state: accelerate's ``PartialState`` under a multi-process launch, else ``None``.
        accept: ``record -> bool``: whether a record counts as finished work (e.g. its output file is
            there); default: every record.
        prefix: names this list of items among the job's others (their claims are kept apart).

    Attributes:
        done: the keys of the finished records (kept up to date as items are claimed).
        todo: the unfinished items when the runner was made.
    """

    def __init__(
        self,
        store: RunStore,
        work: Sequence,
        item_keys: Callable[[Any], list[tuple]],
        key: Callable[[Mapping], tuple],
        state=None,
        *,
        accept: Callable[[Mapping], bool] | None = None,
        prefix: str = "",
    ):
        self.store, self.work, self.item_keys, self.key, self.state = store, list(work), item_keys, key, state
        self.accept, self.prefix = accept, prefix
        self._offsets: dict = {}  # this runner's place in the records (another runner of the store has its own)
        self.claims = ItemClaims(store.folder)  # before the records are read: see ItemClaims.close
        self.done: set[tuple] = set()
        self.refresh()
        self._todo = [(i, item) for i, item in enumerate(self.work) if not self.finished(item)]
        self.todo = [item for _, item in self._todo]
        if state is not None:
            state.wait_for_everyone()  # every process has read the same finished records before any appends

    def refresh(self) -> None:
        """Adds the keys of the records appended since the last refresh (by any process); a record without an
        item's key (planted, or of another format) makes nothing done."""
        keys = (
            record_key(self.key, r)
            for r in self.store.new_records(self._offsets)
            if self.accept is None or self.accept(r)
        )
        self.done.update(k for k in keys if k is not None)

    def finished(self, item) -> bool:
        return all(k in self.done for k in self.item_keys(item))

    def run(
        self, run_item: Callable[[Any], None], *, desc: str, show: bool = True, describe: Callable[[Any], str] = str
    ) -> None:
        """Calls ``run_item(item)`` for each unfinished item this process claims (it appends the item's
        records, skipping keys already in :attr:`done`), then waits for the items other processes hold."""
        state = self.state
        if state is None:
            bar = tqdm(total=len(self.work), initial=len(self.work) - len(self.todo), desc=desc, disable=not show)
        else:
            bar = tqdm(
                desc=f"{desc} [process {state.process_index} of {state.num_processes}]", unit="item", disable=not show
            )
        order = list(self._todo)
        if state is not None and state.process_index % 2:
            # odd processes go from the end: the last items to start are cheap ones of both ends rather
            # than one long item (items come grouped, e.g. layer by layer)
            order.reverse()
        held = []
        for i, item in order:
            if not self._run(i, item, run_item, bar, describe, wait=False):
                held.append((i, item))
        for i, item in held:  # held by other processes: wait, and run what a process that died left
            bar.set_postfix_str(f"waiting for another process: {describe(item)}")
            self._run(i, item, run_item, bar, describe, wait=True)
        bar.close()

    def run_together(
        self, run_item: Callable[[Any], None], *, desc: str, show: bool = True, describe: Callable[[Any], str] = str
    ) -> None:
        """Like :meth:`run`, for items that every process of a launch runs at once (data-parallel training):
        the main process claims the next item (one nobody holds, else it waits for a held one) and tells the
        others which, and whether it is still unfinished; all of them call ``run_item`` on it."""
        state = self.state
        if state is None or state.num_processes == 1:
            return self.run(run_item, desc=desc, show=show, describe=describe)
        bar = tqdm(total=len(self.work), initial=len(self.work) - len(self.todo), desc=desc, disable=not show)
        pending = dict(self._todo)
        while True:
            index, fd = -1, None
            if state.is_main_process:
                index, fd = self._claim_any(pending)
            index = _broadcast_int(index, state)
            if index < 0:
                break
            item = pending.pop(index)
            ran = 0
            if state.is_main_process:
                self.refresh()
                ran = int(not self.finished(item))
            try:
                if _broadcast_int(ran, state):
                    bar.set_postfix_str(describe(item))
                    run_item(item)
            finally:
                if fd is not None:
                    self.claims.release(fd)
            bar.update(1)
        bar.close()

    def _claim_any(self, pending: Mapping[int, Any]) -> tuple[int, int | None]:
        """``(index, claim)`` of the first pending item nobody holds, else of the first (waited for); ``-1``
        when none is pending."""
        for index in pending:
            fd = self.claims.acquire(index, prefix=self.prefix)
            if fd is not None:
                return index, fd
        for index in pending:
            return index, self.claims.acquire(index, wait=True, prefix=self.prefix)
        return -1, None

    def _run(self, index: int, item, run_item, bar, describe, *, wait: bool) -> bool:
        fd = self.claims.acquire(index, wait=wait, prefix=self.prefix)
        if fd is None:
            return False
        try:
            self.refresh()
            ran = not self.finished(item)
            if ran:
                bar.set_postfix_str(describe(item))
                run_item(item)
        finally:
            self.claims.release(fd)
        if ran or self.state is None:
            bar.update(1)
        return True

    def close(self) -> None:
        """After the last item: under a launch, waits for every process; the last process to finish
        removes the claims folder."""
        if self.state is not None:
            if not self.state.is_main_process:
                self.claims.leave()
            self.state.wait_for_everyone()
            if self.state.is_main_process:
                self.claims.close()
        else:
            self.claims.close()


def _broadcast_int(value: int, state) -> int:
    """The main process's ``value``, in every process of the launch (a tensor: nothing is pickled)."""
    from accelerate.utils import broadcast

    return int(broadcast(torch.tensor([value], device=state.device))[0])


class Job:
    """What a job of work items declares; :func:`run_job` does the rest (claims, resume, progress).

    Subclasses (:class:`~diffinv.jobs.bench.BenchJob`, ...) define the record key (:meth:`key`), the keys an
    item writes (:meth:`keys`) and how one item becomes its records (:meth:`records`, a generator: each
    record is appended as soon as it is given); :attr:`done` holds the keys of the finished records while
    the job runs, so that an item cut short keeps what it finished.
    """

    desc = "work"
    done: set = frozenset()

    @staticmethod
    def key(record: Mapping) -> tuple:
        """The key of a record: which item's it is."""
        raise NotImplementedError

    def keys(self, item) -> list[tuple]:
        """The keys of the records ``item`` writes."""
        raise NotImplementedError

    def records(self, item) -> Iterator[dict]:
        """Runs ``item``: its records, one at a time (those of keys in :attr:`done` left out)."""
        raise NotImplementedError

    def describe(self, item) -> str:
        """The item, for the progress bar."""
        return str(item)

    def after(self, item) -> None:
        """Called after each item this process ran (e.g. to rewrite the tables)."""


def run_job(
    job: Job,
    store: RunStore,
    items: Sequence,
    *,
    state=None,
    show: bool = True,
    together: bool = False,
    prefix: str = "",
    accept: Callable[[Mapping], bool] | None = None,
) -> WorkRunner:
    """Runs the unfinished ``items`` of ``job`` in ``store`` (see the module): each item's records are
    appended as the job gives them; ``together``: every process of a launch runs each item at once
    (:meth:`WorkRunner.run_together`). Returns the runner, closed."""
    runner = WorkRunner(store, items, job.keys, job.key, state, accept=accept, prefix=prefix)
    job.done = runner.done

    def run_item(item) -> None:
        for record in job.records(item):
            store.append(record)
        job.after(item)

    (runner.run_together if together else runner.run)(run_item, desc=job.desc, show=show, describe=job.describe)
    runner.close()
    return runner


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


@dataclass(frozen=True)
class TrainingItem:
    """One model a job trains (atlas, audit): ``method``'s model of ``kind``
    (:data:`~diffinv.jobs.training.TRAINED_KINDS`) for ``layer``, knowing ``defense`` (``"none"``: clean
    features), into ``folder``. Every process of a launch trains it at once (data-parallel)."""

    method: str
    kind: str
    layer: str
    defense: str
    folder: Path

    def __str__(self) -> str:
        known = "" if self.defense == "none" else f" ({self.defense})"
        return f"train {self.kind} {self.layer}{known}"


def record_key(key: Callable[[Mapping], tuple], record: Mapping) -> tuple | None:
    """``key(record)``, or ``None`` when the record names no item (a field of the key missing, a value that
    cannot be a key)."""
    try:
        k = key(record)
        hash(k)
    except (KeyError, TypeError, AttributeError):
        return None
    return k


def merge_records(
    records: Iterable[Mapping],
    key: Callable[[Mapping], tuple],
    order: Sequence[Sequence] | None = None,
    *,
    own: Iterable[tuple] | None = None,
    notes: list[str] | None = None,
) -> list[dict]:
    """One record per item of the run, in the settings' order.

    Records are not trusted as read: one whose key is not an item of this run (a field missing; with
    ``order``, a value not among the settings' ones; with ``own``, a key not in it) is left out, and of an
    item recorded more than once the last written counts (records are appended, so a later record is a
    redone item). Each is said in ``notes`` (a list the caller passes, e.g. for the tables and a warning).

    Args:
        order: the values of each field of the key in the settings' order (``[layers, methods, ...]``); the
            records are sorted by it.
        own: the keys of every item of the run (when the fields' values alone do not say it).
    """
    ranks = None if order is None else [{v: i for i, v in enumerate(values)} for values in order]
    own = None if own is None else set(own)
    unique: dict[tuple, dict] = {}
    repeated: dict[tuple, int] = {}
    foreign = 0
    for record in records:
        k = record_key(key, record)
        if (
            k is None
            or (own is not None and k not in own)
            or (ranks is not None and (len(k) != len(ranks) or any(v not in r for r, v in zip(ranks, k))))
        ):
            foreign += 1
            continue
        if k in unique:
            repeated[k] = repeated.get(k, 1) + 1
        unique[k] = dict(record)
    if notes is not None:
        if foreign:
            notes.append(
                f"{foreign} record{'s' if foreign > 1 else ''} of items that are not in this run (another "
                f"layer, method, seed or image, or no item at all) left out."
            )
        if repeated:
            shown = "; ".join(" ".join(str(v) for v in k if v != "") for k in list(repeated)[:3])
            more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
            notes.append(
                f"{len(repeated)} item{'s have' if len(repeated) > 1 else ' has'} several records "
                f"({shown}{more}): the last written of each is kept."
            )
    if ranks is None:
        return list(unique.values())
    return [unique[k] for k in sorted(unique, key=lambda k: tuple(r[v] for r, v in zip(ranks, k)))]


def place(target, state):
    """``(target, device)``: under a multi-process launch, the target on this process's own device."""
    device = target.mean.device
    if state is not None:
        device = process_device(state, device)
        if target.mean.device != device:
            target = target.to(device)
    return target, device


def item_settings(
    target,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    seeds: Sequence[int],
    batch_size: int,
    device: torch.device,
    *,
    labels: torch.Tensor | None = None,
    judge=None,
    **job,
) -> dict:
    """The manifest of a job of work items: what every such job records, and the job's own settings.
    ``labels`` (:func:`~diffinv.judge.labels_tensor`) and ``judge`` are recorded only when given, so that
    runs without them keep the manifests they had before."""
    return {
        "target": target.identity(),
        "layers": list(layers),
        **job,
        "seeds": list(seeds),
        "batch_size": int(batch_size),
        "image_size": list(images.shape[-2:]),
        "images": list(sources),
        "images_fingerprint": pixels_fingerprint(images),
        "device": device.type,
        **({"labels": [image_label(labels, i) for i in range(len(labels))]} if labels is not None else {}),
        **({"judge": judge.identity()} if judge is not None else {}),
    }


def image_label(labels: torch.Tensor | None, i: int) -> int | None:
    """Image ``i``'s true class as a record holds it (``labels``: :func:`~diffinv.judge.labels_tensor`,
    ``-1`` where unknown): ``None`` where unknown."""
    return None if labels is None or labels[i] < 0 else int(labels[i])


def image_scores(scores: Mapping, j: int) -> dict:
    """Image ``j``'s values of per-image ``scores`` (:func:`~diffinv.metrics.reconstruction_scores`), as a
    record holds them: floats, ``None`` where a score does not apply (or is NaN: an unknown label)."""
    values = {}
    for metric, column in scores.items():
        value = None if column is None else float(column[j])
        values[metric] = None if value is None or math.isnan(value) else value
    return values


class LayerCache:
    """Values made once per key and kept for one layer at a time (``key[0]``): work items come layer
    by layer, so a job keeps only the current layer's features."""

    def __init__(self):
        self._values: dict = {}

    def get(self, key: tuple, make: Callable[[], Any]):
        if key not in self._values:
            if not any(k[0] == key[0] for k in self._values):
                self._values.clear()
            self._values[key] = make()
        return self._values[key]
