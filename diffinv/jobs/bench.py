"""Per-layer comparison of inversion methods: records, tables and image grids (``diffinv demo`` is this
benchmark on embedded defaults).

:func:`run_benchmark` inverts the features of every work item (:class:`BenchItem`: layer, method, seed, chunk
of ``batch_size`` images), scores the reconstructions and appends one record per image to the run store
(:mod:`diffinv.jobs.store`) as soon as each item finishes: a re-run with the same settings resumes, one with
other settings is refused. The job protocol's runner (:func:`~diffinv.jobs.items.run_job`) splits the items
across the processes of a launch and the commands on the same folder; the main process merges the results.

Example:
    >>> records = run_benchmark(target, images, names, ["blocks.1", "blocks.6"],
    ...                         {"pixel": PixelInverter, "dip": DIPInverter}, out_dir="out")
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..features import FeatureSet
from ..inverters import Inverter
from ..io import save_image, write_json
from ..judge import Judge, labels_tensor
from ..metrics import LPIPS, reconstruction_scores
from ..optimization import EarlyStopping
from ..targets import TargetNetwork
from .figures import write_depth_plot, write_grid
from .items import Job, LayerCache, place, run_job
from .peak_memory import PeakMemory
from .records import image_label, image_scores, item_settings, merge_records
from .report import write_table
from .store import RunStore, unique_names

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BenchItem",
    "BenchJob",
    "PeakMemory",
    "image_path",
    "merged_records",
    "run_benchmark",
    "work_items",
]


def _key(record: Mapping) -> tuple:
    return (record["layer"], record["method"], record["seed"], record["image"])


def chunks(num_images: int, batch_size: int) -> list[range]:
    """The image indices in chunks of ``batch_size``: the images of one work item."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    return [range(i, min(i + batch_size, num_images)) for i in range(0, num_images, batch_size)]


def image_path(out_dir: str | os.PathLike, layer: str, method: str, seed: int, name: str) -> Path:
    """Where the benchmark writes a reconstruction: ``images/LAYER/METHOD/NAME_seedS.png``."""
    return Path(out_dir) / "images" / layer / method / f"{name}_seed{seed}.png"


OUTPUTS = ("images", "results.json", "results.md", "grid.png", "psnr_vs_depth.png")
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class BenchItem:
    """One work item of a benchmark: ``method`` inverts the features of ``images`` (indices of a chunk,
    inverted together) at ``layer`` with ``seed``."""

    layer: str
    method: str
    seed: int
    images: range

    def __str__(self) -> str:
        return f"{self.layer} {self.method} seed {self.seed} images {self.images.start}-{self.images.stop - 1}"


def work_items(
    layers: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    num_images: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[BenchItem]:
    """Every work item of a benchmark, in a fixed order: layer, method, seed, image indices, the
    images in chunks of ``batch_size`` (inverted together). An item's numbers depend only on the item
    (its chunk, its seed), so any process may run it."""
    return [
        BenchItem(layer, method, seed, chunk)
        for layer in layers
        for method in methods
        for seed in seeds
        for chunk in chunks(num_images, batch_size)
    ]


def merged_records(
    records: Sequence[Mapping],
    layers: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    sources: Sequence[str],
    notes: list[str] | None = None,
) -> list[dict]:
    """The records of every process, one per item of the run (the last written), in the order of the settings:
    layer, method, seed, image; records of other items are left out (:func:`~diffinv.jobs.items.merge_records`,
    which says both in ``notes``)."""
    return merge_records(records, _key, (layers, methods, seeds, sources), notes=notes)


def run_benchmark(
    target: TargetNetwork,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter]],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: Mapping | None = None,
    overwrite: bool = False,
    progress: bool = True,
    state=None,
    labels: Sequence[int | None] | None = None,
    judge: Judge | None = None,
    early_stop: EarlyStopping | None = None,
) -> list[dict]:
    """Inverts every (layer, method, seed, chunk of images) and writes results, tables and grids into a run store.

    Args:
        target: the network; its ``input_size`` should equal the images' size.
        images: ``(N, 3, H, W)`` originals in [0, 1].
        sources: one name per image (file paths or dataset names); output file names are made
            unique per source (:func:`~diffinv.jobs.store.unique_names`).
        layers: the layers to invert, shallow to deep.
        methods: name -> an :class:`Inverter` for the target, or a factory ``target -> Inverter``.
        out_dir: the run folder: ``manifest.json``, ``records.jsonl`` (``records.rankN.jsonl`` for
            process N of a multi-process launch), ``results.json``, ``results.md``, ``grid.png``,
            ``psnr_vs_depth.png`` and ``images/``.
        seeds: each (layer, method) is run once per seed.
        batch_size: images inverted together: one work item is (layer, method, seed, a chunk of
            ``batch_size`` images). Part of the settings (it can change the numbers).
        settings: more settings that define the results (e.g. the dataset), for the manifest.
        overwrite: start afresh in a folder that holds a run with other settings.
        state: accelerate's ``PartialState`` under a multi-process launch
            (:func:`~diffinv.jobs.distributed.process_state`): each unfinished work item is taken by the
            next free process (:class:`~diffinv.jobs.items.WorkRunner`), each process runs its items on its
            own device (:func:`~diffinv.jobs.distributed.process_device`) and appends to its own records shard,
            and the main process writes the merged results, tables and plots once all are done.
            ``None``: one process does everything.
        labels: the true class of each image (``None`` where unknown; :mod:`diffinv.labels`): records
            carry it, and the tables the top-1 accuracy of the originals and reconstructions.
        judge: a second network that the attack never saw (:class:`~diffinv.judge.Judge`): its top-1
            accuracy and agreement on the reconstructions and its feature similarity to the originals.
        early_stop: stop an image of an optimizing method (``config.accepts_early_stop``) when its loss
            has stopped improving (:class:`~diffinv.optimization.EarlyStopping`; recorded in the
            manifest); records then carry ``iterations_run``. ``None``: every image runs all its iterations.

    Returns:
        Every record of the run (resumed ones and those of other processes included), one per
        (layer, method, seed, image), in that order.

    Raises:
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
    """
    if len(sources) != len(images):
        raise ValueError(f"`sources` has {len(sources)} names for {len(images)} images.")
    job = BenchJob(
        target,
        images,
        sources,
        layers,
        methods,
        out_dir,
        seeds=seeds,
        batch_size=batch_size,
        settings=settings,
        overwrite=overwrite,
        progress=progress,
        state=state,
        labels=labels,
        judge=judge,
        early_stop=early_stop,
    )
    run_job(job, job.store, job.items(), state=state, show=job.show)
    return job.report()


class BenchJob(Job):
    """The benchmark as a job of :class:`BenchItem`: opens its run store (the manifest of every setting),
    turns an item into one record per image (:meth:`records`) and writes the report (:meth:`report`).
    The arguments are those of :func:`run_benchmark`."""

    desc = "benchmark"

    def __init__(
        self,
        target,
        images,
        sources,
        layers,
        methods,
        out_dir,
        *,
        seeds,
        batch_size,
        settings,
        overwrite,
        progress,
        state,
        labels,
        judge,
        early_stop,
    ):
        self.target, self.device = place(target, state)
        self.sources, self.layers, self.seeds, self.batch_size = list(sources), list(layers), list(seeds), batch_size
        self.state, self.early_stop, self.label_values = state, early_stop, labels_tensor(labels, len(images))
        self.judge = judge.to(self.device) if judge is not None else None
        self.inverters = {m: f if isinstance(f, Inverter) else f(self.target) for m, f in methods.items()}
        for inverter in self.inverters.values():
            inverter.check_image_size(tuple(images.shape[-2:]))
        manifest = item_settings(
            self.target,
            images,
            sources,
            layers,
            seeds,
            batch_size,
            self.device,
            methods={name: inverter.settings() for name, inverter in self.inverters.items()},
            labels=self.label_values,
            judge=self.judge,
            # runs without early stopping keep the manifests they had before the option
            **({"early_stop": early_stop.settings()} if early_stop is not None else {}),
        )
        self.store = RunStore(
            out_dir, "bench", {**manifest, **dict(settings or {})}, overwrite=overwrite, outputs=OUTPUTS, state=state
        )
        self.out_dir = self.store.folder
        self.main = state is None or state.is_main_process
        self.show = progress and (state is None or state.is_local_main_process)
        self.names = unique_names(sources)
        self.lpips = LPIPS()
        self.images = images.to(self.device)
        self.meta = {
            "target": self.target.name,
            "judge": self.judge.name if self.judge is not None else None,
            "image_size": list(images.shape[-2:]),
            "lpips": self.lpips.reason or "alexnet",
            "device": str(self.device),
            "processes": 1 if state is None else state.num_processes,
            "threads": torch.get_num_threads(),
        }
        self.features = LayerCache()
        self.originals_scored: dict = {}  # per batch of images: the target's and the judge's outputs on the originals

    def items(self) -> list[BenchItem]:
        return work_items(self.layers, list(self.inverters), self.seeds, len(self.images), self.batch_size)

    key = staticmethod(_key)

    def keys(self, item: BenchItem) -> list[tuple]:
        return [(item.layer, item.method, item.seed, self.sources[i]) for i in item.images]

    def records(self, item: BenchItem) -> Iterator[dict]:
        """Inverts the item's images, scores them and gives one record per image (its PNG written first)."""
        chunk, sources = item.images, self.sources
        feats = self.features.get(
            (item.layer, chunk),
            lambda: FeatureSet.extract(
                self.target, self.images[chunk.start : chunk.stop], item.layer, sources=[sources[i] for i in chunk]
            ),
        )
        inverter, early_stop = self.inverters[item.method], self.early_stop
        stop = {"early_stop": early_stop} if early_stop is not None and inverter.config.accepts_early_stop else {}
        with PeakMemory(self.device) as memory:
            out = inverter.invert(
                feats, generator=torch.Generator().manual_seed(item.seed), progress=self.show, **stop
            )
        labels = None if self.label_values is None else self.label_values[chunk.start : chunk.stop]
        scores = reconstruction_scores(
            self.target,
            out.images.to(self.device),
            self.images[chunk.start : chunk.stop],
            lpips=self.lpips,
            judge=self.judge,
            feature_residual=out.feature_residual,
            originals_cache=self.originals_scored.setdefault(chunk, {}),
            labels=labels,
        )
        for j, (i, key) in enumerate(zip(chunk, self.keys(item))):
            if key in self.done:
                continue  # finished earlier (in a chunk that was cut short): kept as it is
            file = save_image(
                out.images[j], image_path(self.out_dir, item.layer, item.method, item.seed, self.names[i])
            )
            yield {
                "layer": item.layer,
                "method": item.method,
                "seed": item.seed,
                "image": sources[i],
                "file": file.relative_to(self.out_dir).as_posix(),
                "white_box": bool(inverter.white_box),
                "hybrid": bool(inverter.hybrid),
                "label": image_label(self.label_values, i),
                **image_scores(scores, j),
                "seconds": out.seconds / len(chunk),
                "peak_memory_mb": memory.peak_mb,
                "skipped_steps": int(out.info.get("skipped_steps", 0)),
                **({"iterations_run": int(out.loss_history.shape[0])} if early_stop is not None else {}),
            }

    def after(self, item: BenchItem) -> None:
        if self.main:
            self.write_results()

    def write_results(self, notes: list[str] | None = None) -> list[dict]:
        """``results.json``: the merged records so far (``notes``: what they held that does not count)."""
        records = merged_records(
            self.store.records(), self.layers, list(self.inverters), self.seeds, self.sources, notes
        )
        write_json(self.out_dir / "results.json", {"config": {**self.meta, **self.store.settings}, "records": records})
        return records

    def report(self) -> list[dict]:
        """The main process writes the results, the table, the grid and the plot; every process returns the
        merged records."""
        out_dir, methods = self.out_dir, list(self.inverters)
        if self.main:
            notes: list[str] = []  # what the records held that does not count, said once, at the end
            records = self.write_results(notes)
            for note in notes:
                warnings.warn(f"{str(out_dir / 'records.jsonl')!r}: {note}", stacklevel=3)
            write_table(
                records,
                out_dir / "results.md",
                layers=self.layers,
                methods=methods,
                meta=self.meta,
                record_notes=notes,
            )
            write_grid(
                self.images,
                self.layers,
                methods,
                lambda layer, method: image_path(out_dir, layer, method, self.seeds[0], self.names[0]),
                out_dir / "grid.png",
            )
            write_depth_plot(records, out_dir / "psnr_vs_depth.png", layers=self.layers, methods=methods)
        if self.state is not None:
            self.state.wait_for_everyone()  # the merged outputs are written when any process returns
            records = merged_records(self.store.records(), self.layers, methods, self.seeds, self.sources)
        return records
