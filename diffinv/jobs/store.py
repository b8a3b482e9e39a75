"""The run store: one folder per run, a manifest of what defines its results, records appended atomically.

* ``manifest.json``: the job kind, the diffinv version and the *settings that define the results*.
* ``records.jsonl``: one JSON record per finished item, appended with one ``write`` and ``fsync`` (a line
  cut short by a crash is ignored); each process of a launch appends to its own shard
  (``records.rank1.jsonl``, ...), and :meth:`RunStore.records` reads them all.
* the job's own outputs, each written atomically.

Opening a folder that holds a run *resumes* it with the same settings and *refuses* other settings with
:class:`RunSettingsError`, listing each change; ``overwrite=True`` starts afresh, removing only what the
manifest lists as the run's own files. A folder without a manifest (a user's photos) is never cleared, and
a link in place of the manifest or a record file is refused (docs: guides/safety.md).

Example:
    >>> store = RunStore("bench_out", "bench", {"target": "resnet50", "iterations": 300})
    >>> store.append({"layer": "layer3", "method": "pixel", "seed": 0, "image": "cat.png", "psnr": 14.2})
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .. import __version__
from ..io import cut_short, write_json

__all__ = ["RunSettingsError", "RunStore", "settings_diff", "unique_names"]

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"


class RunSettingsError(ValueError):
    """An output folder holds a run made with other settings (or is not a run folder)."""


def settings_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts (nested dicts are compared key by key)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key not in old:
            changes.append(f"{name}: not set there, {new[key]!r} now")
        elif key not in new:
            changes.append(f"{name}: {old[key]!r} there, not set now")
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            changes += settings_diff(old[key], new[key], prefix=f"{name}.")
        elif old[key] != new[key]:
            changes.append(f"{name}: {old[key]!r} there, {new[key]!r} now")
    return changes


def _jsonable(value):
    """Settings as JSON would give them back (tuples -> lists), so that comparisons are exact."""
    return json.loads(json.dumps(value))


class RunStore:
    """A run folder with a manifest and append-only records.

    Args:
        folder: the output folder (created if missing).
        kind: the job, e.g. ``"bench"``, ``"video"``, ``"train-decoder"``.
        settings: everything that defines the results (JSON-serializable).
        overwrite: start a fresh run even when the folder holds one (its run files are removed).
        outputs: names of files/folders the job writes into ``folder`` besides the manifest and the
            records; ``overwrite`` removes them too (nothing else in the folder is touched).
        state: accelerate's ``PartialState`` under a multi-process launch (see
            :mod:`diffinv.jobs.distributed`): every process checks the folder, the main process
            clears it (``overwrite``) and writes the manifest, and the others wait for it.

    Raises:
        RunSettingsError: the folder holds a run of another kind or with other settings (the message
            lists each changed setting), or files of a run without a manifest.
        NotADirectoryError: ``folder`` is an existing file.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        kind: str,
        settings: Mapping,
        *,
        overwrite: bool = False,
        outputs: Sequence[str] = (),
        state=None,
    ):
        self.folder, self.kind = Path(folder), kind
        self.settings = _jsonable(dict(settings))
        self.outputs = tuple(outputs)
        self._offsets: dict[Path, int] = {}  # how far new_records() has read each shard
        self.rank = 0 if state is None else state.process_index
        main = state is None or state.is_main_process
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"output folder {str(self.folder)!r} is an existing file; choose a folder.")
        self._check_run_files()
        manifest = self._read_manifest()
        if manifest is not None and not overwrite:
            self._check(manifest)
        elif manifest is None and (main or not overwrite):
            # (under a launch with overwrite, the others may look while the main process clears the folder)
            self._check_not_a_users_folder(overwrite)
        self.resumed = manifest is not None and not overwrite
        if main:
            if overwrite and manifest is not None:
                self.clear(manifest)
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(
                self.folder / MANIFEST,
                {
                    "kind": kind,
                    "diffinv_version": __version__,
                    "settings": self.settings,
                    "outputs": list(self.outputs),
                },
            )
        if state is not None:
            state.wait_for_everyone()

    # ------------------------------------------------------------------ the folder
    def _run_files(self) -> list[Path]:
        """The manifest and every record file that the folder holds by name (links included)."""
        if not self.folder.is_dir():
            return []
        names = [MANIFEST, RECORDS, *sorted(p.name for p in self.folder.glob("records.rank*.jsonl"))]
        return [self.folder / name for name in names if os.path.lexists(self.folder / name)]

    def _check_run_files(self) -> None:
        """Refuses a manifest or record file that is a symbolic link (or a FIFO, a device, a folder): the run
        would read someone else's file, and its appends would fail after the work."""
        for path in self._run_files():
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise RunSettingsError(
                    f"{str(path)!r} is a symbolic link, but a run's {path.name} must be a regular file in the run "
                    f"folder (it is never read or written through a link). Remove the link (its target is not "
                    f"touched) or choose another output folder; --overwrite does not replace it."
                )
            if not stat.S_ISREG(mode):
                raise RunSettingsError(
                    f"{str(path)!r} is not a regular file (a folder, a FIFO or a device), but a run's {path.name} "
                    f"must be one. Move it away or choose another output folder."
                )

    def _check_not_a_users_folder(self, overwrite: bool) -> None:
        """A folder without a manifest was never a run (or lost what said so): it may receive the run only when
        it holds none of the run's names, and is never cleared (``overwrite`` then has nothing to replace)."""
        if not self.folder.is_dir():
            return
        entries = sorted(os.listdir(self.folder))
        shards = [name for name in entries if name.startswith("records.rank") and name.endswith(".jsonl")]
        clashes = [name for name in (RECORDS, *shards, *self.outputs) if os.path.lexists(self.folder / name)]
        if clashes or (overwrite and entries):
            held = clashes or entries
            shown = ", ".join(cut_short(name, 200) for name in held[:5])
            shown += f" and {len(held) - 5} more" if len(held) > 5 else ""
            raise RunSettingsError(
                f"output folder {cut_short(str(self.folder), 200)!r} is not a diffinv run folder (it has no {MANIFEST}) and "
                f"holds {shown}: a run writes into a new or empty folder, or a folder of files it would not "
                f"touch, and never deletes files it did not write (--overwrite replaces only a diffinv run). Choose "
                f"another output folder (a new one is created), or move those files away."
            )

    # ------------------------------------------------------------------ manifest
    def _read_manifest(self) -> dict | None:
        path = self.folder / MANIFEST
        if not os.path.lexists(path):
            return None
        try:
            manifest = json.loads(_read_regular(path))
            manifest["kind"], manifest["settings"]
        except (ValueError, KeyError, TypeError) as err:  # ValueError: not JSON, not UTF-8
            raise RunSettingsError(
                f"{str(path)!r} is not a diffinv run manifest ({err}); move it away or choose another output folder."
            ) from err
        return manifest

    def _check(self, manifest: Mapping) -> None:
        where = str(self.folder)
        if manifest["kind"] != self.kind:
            raise RunSettingsError(
                f"output folder {where!r} holds a {manifest['kind']!r} run, not a {self.kind!r} run; choose another "
                f"output folder, or pass --overwrite (overwrite=True) to replace it."
            )
        old = {"diffinv_version": manifest.get("diffinv_version"), **manifest["settings"]}
        changes = settings_diff(old, {"diffinv_version": __version__, **self.settings})
        if changes:
            raise RunSettingsError(
                f"cannot resume in {where!r}: it holds a {self.kind} run made with other settings, and its results "
                f"would be mixed with these:\n  "
                + "\n  ".join(changes)
                + "\nUse the same settings to resume it, choose another output folder, or pass --overwrite "
                "(overwrite=True) to delete its results and start a fresh run."
            )

    def clear(self, manifest: Mapping | None = None) -> None:
        """Removes the run's files: the manifest, the records and the outputs that ``manifest`` (the folder's)
        lists; nothing else in the folder. A manifest written before it listed its outputs counts the outputs of
        this store's job when it is a run of the same job, and none when of another."""
        manifest = self._read_manifest() if manifest is None else manifest
        if manifest is None:
            return  # not a run folder: nothing here is the run's to delete
        outputs = manifest.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs):
            outputs = list(self.outputs) if manifest.get("kind") == self.kind else []
        outputs = [name for name in outputs if name and Path(name).name == name and name not in (".", "..")]
        shards = [p.name for p in self.folder.glob("records.rank*.jsonl")] if self.folder.is_dir() else []
        for name in (RECORDS, *shards, *outputs, MANIFEST):  # the manifest last: until then it is a run folder
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # ------------------------------------------------------------------ records
    @property
    def records_path(self) -> Path:
        """Where this process appends: ``records.jsonl`` (main process), ``records.rankN.jsonl`` (process N)."""
        return self.folder / (RECORDS if self.rank == 0 else f"records.rank{self.rank}.jsonl")

    def _shards(self) -> list[Path]:
        """The record files, main first, then by rank: regular files only (a link or a FIFO planted while the run
        is open is never read)."""
        shards = sorted(self.folder.glob("records.rank*.jsonl"), key=lambda p: (len(p.name), p.name))
        return [path for path in [self.folder / RECORDS, *shards] if _is_regular(path)]

    @staticmethod
    def _parse(lines: list[bytes]) -> list[dict]:
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # not JSON (or not UTF-8)
                continue  # a write cut short: that item was not finished
            if isinstance(record, dict):
                records.append(record)
        return records

    def records(self) -> list[dict]:
        """Every finished record of every process, shard by shard in the order written (a line cut
        short by a crash is skipped)."""
        return [r for path in self._shards() for r in self._parse(_read_regular(path).splitlines())]

    def new_records(self, offsets: dict | None = None) -> list[dict]:
        """The records appended (by any process) since the last call: the first call gives all of
        them, later calls read only what the shards gained (complete lines). ``offsets``: a reader's own
        place in the shards (an empty dict at first), for several readers of one store (the runners of a
        job's lists of items); default: the store's."""
        offsets = self._offsets if offsets is None else offsets
        records = []
        for path in self._shards():
            data = _read_regular(path, offsets.get(path, 0))
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            offsets[path] = offsets.get(path, 0) + end
            records += self._parse(data[:end].splitlines())
        return records

    def keys(self, key: Callable[[Mapping], tuple]) -> set[tuple]:
        """``key(record)`` of every finished record."""
        return {key(r) for r in self.records()}

    def append(self, record: Mapping) -> None:
        """Appends one record: one ``write`` of one line, then ``fsync``. After a line cut short (a crash
        during a write), the record starts on a line of its own."""
        line = (json.dumps(_jsonable(dict(record))) + "\n").encode("utf-8")
        fd = os.open(self.records_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_regular(path: Path, offset: int = 0) -> bytes:
    """The bytes of a regular file from ``offset``, never through a link (``O_NOFOLLOW``) nor from a FIFO or a
    device (``O_NONBLOCK``, then checked): ``RunSettingsError`` naming the file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise RunSettingsError(
            f"{str(path)!r} cannot be read as a regular file of the run folder ({err.strerror}); "
            f"move it away or choose another output folder."
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunSettingsError(
                f"{str(path)!r} is not a regular file; move it away or choose another output folder."
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(offset)
            return f.read()
    finally:
        os.close(fd)


def unique_names(sources: Sequence[str]) -> list[str]:
    """A file-name stem per source, unique within ``sources``.

    The stem of the source when no other source has it (``cat.png`` -> ``cat``); otherwise the
    stem and a short hash of the full source (``d1/img.png`` -> ``img-3f2a9c1b``), and the
    position when the same source is given twice.
    """
    stems = [Path(str(s)).stem or "image" for s in sources]
    names = [
        stem if stems.count(stem) == 1 else f"{stem}-{hashlib.sha1(str(s).encode()).hexdigest()[:8]}"
        for stem, s in zip(stems, sources)
    ]
    return [name if names.count(name) == 1 else f"{name}-{i}" for i, name in enumerate(names)]
