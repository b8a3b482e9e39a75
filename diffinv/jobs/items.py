"""The one job protocol: the work items of every job (bench, atlas, audit, video) and the runner of them.

A job (:class:`Job`) lists its work items, typed dataclasses, in a fixed order (the same list for the same
settings), says which records each item writes (their keys) and how one item becomes its records;
:func:`run_job` and :class:`WorkRunner` do the rest: resume (items whose records are all in the run store are
done), claims (:mod:`diffinv.jobs.claims`: no item runs twice, and every process of a launch or a second
command on the same folder takes the items nobody holds), items that every process of a launch runs at once
(data-parallel training, :class:`TrainingItem`), one progress bar per process, and the merge of the records
(:func:`~diffinv.jobs.records.merge_records`).

Example:
    >>> runner = run_job(job, store, job.items(), state=state, show=True)
    >>> runner = WorkRunner(store, work, item_keys, key, state=state)  # the same, by hand
    >>> runner.run(run_one, desc="benchmark", show=True, describe=str)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .claims import ItemClaims, claimed
from .distributed import process_device
from .records import image_label, image_scores, item_settings, merge_records, record_key
from .store import RunStore

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


def place(target, state):
    """``(target, device)``: under a multi-process launch, the target on this process's own device."""
    device = target.mean.device
    if state is not None:
        device = process_device(state, device)
        if target.mean.device != device:
            target = target.to(device)
    return target, device


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
