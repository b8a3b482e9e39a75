"""The leakage atlas of a target: every depth, white-box and black-box methods, many images, intervals.

:func:`run_atlas` splits a folder of images into training and evaluation images (:func:`split_images`), trains
one model per layer on the training part for every method that needs one (its class declares
``trained_model``, e.g. the decoder; each a :class:`~diffinv.jobs.items.TrainingItem`, never trained twice),
runs the benchmark (:func:`~diffinv.jobs.bench.run_benchmark`) on the evaluation images and writes the atlas
(:mod:`diffinv.jobs.atlas_report`). The run folder is a run store (kind ``atlas``) holding ``KINDs/LAYER/``
(the trainings) and ``bench/``; the same command again resumes, other settings are refused.

Example:
    >>> split = split_images(collect_images(["photos/"]), 0.8, seed=0)
    >>> result = run_atlas(target, split, ["blocks.1", "blocks.6"],
    ...                    {"pixel": PixelInverter, "decoder": TrainConfig(out="", layer="", max_steps=500)},
    ...                    "atlas_out", size=128)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..datasets import load_image_files
from ..inverters import Inverter
from ..inverters.registry import INVERTERS
from ..io import write_json
from ..optimization import EarlyStopping
from ..targets import TargetNetwork
from .atlas_report import paired_differences, summarize_intervals, write_atlas_table, write_depth_bands, write_gallery
from .atlas_split import AtlasSplit, split_images, training_template
from .bench import DEFAULT_BATCH_SIZE, image_path, run_benchmark
from .items import Job, TrainingItem, run_job
from .store import RunStore, unique_names
from .training import TrainConfig, template_settings, train

__all__ = ["AtlasJob", "AtlasResult", "AtlasSplit", "DEFAULT_EARLY_STOP", "run_atlas", "split_images"]

OUTPUTS = ("decoders", "bench", "results.md", "results.json", "atlas_depth.png", "gallery.png", "timing.json")
# The atlas's default early stopping: an image stops when its loss has not fallen by 1 % in 40 iterations.
DEFAULT_EARLY_STOP = EarlyStopping(patience=40, min_delta=0.01)
# The TrainConfig fields the atlas derives from its split and image size (recorded there, not with the training).
_FROM_SPLIT = ("images", "val_images", "size")


def _key(record: Mapping) -> tuple:
    return record["layer"], record["method"], record["seed"], record["image"]


def _bench_records(folder: Path) -> list[dict]:
    """The finished records in a benchmark folder (every process's shard), without opening it as a run."""
    records = []
    for path in sorted(folder.glob("records*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a write cut short
    return records


@dataclass
class AtlasResult:
    """What :func:`run_atlas` produced.

    Attributes:
        out: the run folder.
        records: every per-image record (the benchmark's, resumed ones included).
        rows: ``summarize_intervals`` of the records (``metric -> (mean, low, high)``).
        training: one record per layer's decoder (seconds, steps, validation PSNR).
        timing: this call's wall time by phase, in seconds.
    """

    out: Path
    records: list[dict]
    rows: list[dict]
    training: list[dict]
    timing: dict


def run_atlas(
    target: TargetNetwork,
    split: AtlasSplit,
    layers: Sequence[str],
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter] | TrainConfig],
    out_dir: str | os.PathLike,
    *,
    size: int,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH_SIZE,
    early_stop: EarlyStopping | None = DEFAULT_EARLY_STOP,
    labels: Sequence[int | None] | None = None,
    judge=None,
    overwrite: bool = False,
    progress: bool = True,
    state=None,
) -> AtlasResult:
    """Trains the models, runs the benchmark and writes the atlas of ``target`` (see the module).

    Args:
        target: the network, fed ``size x size`` images.
        split: the training and evaluation images (:func:`split_images`).
        layers: the layers, shallow to deep.
        methods: name -> an :class:`Inverter` or a factory ``target -> Inverter`` (the white-box methods), or,
            for a method whose class declares ``trained_model`` (``"decoder"``), a
            :class:`~diffinv.jobs.training.TrainConfig` template (steps, batch, width, ...): one model per layer
            is trained on ``split.train`` into ``out_dir/KINDs/LAYER`` (``decoders/LAYER``; ``out``, ``layer``,
            ``images``, ``target``, ``weights`` and ``size`` are set by the atlas), and the method is evaluated
            with it (after the others). Without validation sources in the template, ``val_fraction`` of the
            training images (at most 16, evenly spread) are held out to validate it.
        out_dir: the run folder: ``manifest.json``, ``results.md``, ``results.json``, ``atlas_depth.png``,
            ``gallery.png``, ``timing.json``, ``decoders/LAYER/``, ``bench/`` (per-image records and images).
        size: the image size.
        seeds, batch_size: as in :func:`~diffinv.jobs.bench.run_benchmark`.
        early_stop: stop an image of an optimizing method when its loss has stopped improving
            (recorded); ``None``: every image runs all its iterations.
        labels: the true class of each evaluation image (``None`` where unknown; :mod:`diffinv.labels`).
        judge: a second network the attack never saw (:class:`~diffinv.judge.Judge`), scoring the
            reconstructions (see :func:`~diffinv.jobs.bench.run_benchmark`).
        overwrite: start afresh in a folder that holds an atlas with other settings.
        state: accelerate's ``PartialState`` under a multi-process launch: the models train
            data-parallel, the benchmark's items are shared, the main process writes the atlas.

    Raises:
        ValueError: no layer, a trained method without training images or given as an inverter, or an
            overlap of the split.
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
    """
    start = time.perf_counter()
    job = AtlasJob(
        target,
        split,
        layers,
        methods,
        out_dir,
        size=size,
        seeds=seeds,
        batch_size=batch_size,
        early_stop=early_stop,
        overwrite=overwrite,
        progress=progress,
        state=state,
    )
    tic = time.perf_counter()
    run_job(
        job,
        job.store,
        job.items(),
        state=state,
        show=progress and (state is None or state.is_local_main_process),
        together=True,
        accept=job.trained_folder,
    )
    training_wall = time.perf_counter() - tic
    tic = time.perf_counter()
    earlier = {_key(r) for r in _bench_records(job.out / "bench")}  # finished before this call
    records = run_benchmark(
        target,
        job.images,
        job.names,
        layers,
        job.factories(),
        job.out / "bench",
        seeds=seeds,
        batch_size=batch_size,
        settings={"dataset": "files", "split_seed": split.seed},
        progress=progress,
        state=state,
        early_stop=early_stop,
        labels=labels,
        judge=judge,
    )
    timing = job.timing(records, earlier, training_wall, time.perf_counter() - tic)
    return job.report(records, timing, start)


class AtlasJob(Job):
    """The atlas as a job: its run store, its trainings (:class:`~diffinv.jobs.items.TrainingItem`, one per
    trained method and layer: :meth:`records`), the evaluated methods (:meth:`factories`, run by the
    benchmark) and the report (:meth:`report`). The arguments are those of :func:`run_atlas`."""

    desc = "atlas: training"

    def __init__(
        self,
        target,
        split,
        layers,
        methods,
        out_dir,
        *,
        size,
        seeds,
        batch_size,
        early_stop,
        overwrite,
        progress,
        state,
    ):
        # 1. Check inputs
        if not layers:
            raise ValueError("`layers` is empty; give at least one layer.")
        if set(split.train) & set(split.evaluation):
            raise ValueError("`split`: some evaluation images are also training images; use `split_images`.")
        if not split.evaluation:
            raise ValueError("`split` has no evaluation image.")
        self.target, self.split, self.layers, self.size, self.state = target, split, list(layers), size, state
        self.early_stop, self.main = early_stop, state is None or state.is_main_process
        self.given = {m: f for m, f in methods.items() if not isinstance(f, TrainConfig)}
        self.trained = self._trained(methods, progress)
        self.images, self.names = load_image_files(list(split.evaluation), size)
        self.method_names = [*self.given, *self.trained]
        # 2. The atlas's run store: the split, the layers, the methods and the models' training
        manifest = {
            "target": target.identity(),
            "layers": list(layers),
            "methods": self.method_names,
            "image_size": [size, size],
            "seeds": list(seeds),
            "batch_size": int(batch_size),
            "split": split.settings(),
            "decoder_training": self._training_settings(),
            "early_stop": None if early_stop is None else early_stop.settings(),
        }
        folders = tuple(f"{template.kind}s" for _, template in self.trained.values())
        self.store = RunStore(
            out_dir,
            "atlas",
            manifest,
            overwrite=overwrite,
            outputs=tuple(dict.fromkeys(OUTPUTS[:1] + folders + OUTPUTS[1:])),
            state=state,
        )
        self.out = self.store.folder

    def _trained(self, methods: Mapping, progress: bool) -> dict:
        """``name -> (inverter class, resolved template)`` of the methods that need a trained model."""
        trained = {}
        for name, value in methods.items():
            cls = INVERTERS.get(name)
            kind = None if cls is None else cls.trained_model
            if kind is not None and not isinstance(value, TrainConfig):
                raise ValueError(
                    f"`methods[{name!r}]`: the atlas trains the {kind}s of {name!r} itself on the "
                    f"training split; give a TrainConfig template, not an inverter."
                )
            if isinstance(value, TrainConfig):
                if kind is None:
                    raise ValueError(
                        f"`methods[{name!r}]` is a TrainConfig, but method {name!r} needs no trained "
                        f"model (its class declares no `trained_model`)."
                    )
                if not self.split.train:
                    raise ValueError(
                        f"`methods[{name!r}]` trains a {kind} but `split` has no training image; use a "
                        f"`train_split` > 0."
                    )
                trained[name] = cls, training_template(value, kind, self.target, self.split, self.size, progress)
        return trained

    def _training_settings(self) -> dict | None:
        """The manifest's training settings: the template's (one trained method), or per method."""
        settings = {
            name: template_settings(template, filled=_FROM_SPLIT) for name, (_, template) in self.trained.items()
        }
        if len(settings) <= 1:
            return next(iter(settings.values()), None)
        return settings

    # ------------------------------------------------------------------ the trainings
    def items(self) -> list[TrainingItem]:
        return [
            TrainingItem(name, template.kind, layer, "none", self.out / f"{template.kind}s" / layer)
            for layer in self.layers
            for name, (_, template) in self.trained.items()
        ]

    def key(self, record: Mapping) -> tuple:
        """A training's key: its layer and method (a record without a method, as the atlas wrote when it trained
        one method only, is that method's)."""
        sole = next(iter(self.trained)) if len(self.trained) == 1 else None
        if record["kind"] != "training":
            raise KeyError("kind")
        return record["layer"], record.get("method", sole)

    def keys(self, item: TrainingItem) -> list[tuple]:
        return [(item.layer, item.method)]

    def trained_folder(self, record: Mapping) -> bool:
        """Whether a training record's model is in its folder (a record alone does not make it finished)."""
        try:
            _, template = self.trained[self.key(record)[1]]
        except (KeyError, TypeError):
            return False
        return (self.out / f"{template.kind}s" / str(record["layer"]) / "config.json").is_file()

    def records(self, item: TrainingItem) -> Iterator[dict]:
        """Trains the item's model (every process of a launch takes part); the main process records it."""
        wall = time.perf_counter()
        _, template = self.trained[item.method]
        result = train(dataclasses.replace(template, out=str(item.folder), layer=item.layer))
        if self.main:
            yield {
                "kind": "training",
                "layer": item.layer,
                **({"method": item.method} if len(self.trained) > 1 else {}),
                "steps": result.step,
                "seconds": result.log["train_seconds"],
                "wall_seconds": time.perf_counter() - wall,
                "train_images": result.log["train_items"],
                "val_images": len(result.log["val_items"]),
                "val_psnr": result.val_psnr,
                "val_ssim": result.val_ssim,
            }

    def describe(self, item: TrainingItem) -> str:
        return str(item)

    # ------------------------------------------------------------------ the evaluation and the report
    def factories(self) -> dict:
        """Every evaluated method: the given ones, then each trained one with the folder of its models (the
        option its class names by ``trained_model``)."""
        factories = dict(self.given)
        for name, (cls, template) in self.trained.items():
            folder = self.out / f"{template.kind}s"
            factories[name] = lambda t, cls=cls, folder=folder: cls(t, **{cls.trained_model: folder})
        return factories

    def timing(self, records: list[dict], earlier: set, training_wall: float, bench_wall: float) -> dict:
        """This call's wall time by phase, and the inversion's process-seconds per method."""
        processes = 1 if self.state is None else self.state.num_processes
        new = [r for r in records if _key(r) not in earlier]
        names = self.method_names
        inversion = {m: sum(r.get("seconds") or 0.0 for r in new if r["method"] == m) for m in names}
        return {
            "decoder_training": training_wall,
            "evaluation": bench_wall,
            "processes": processes,
            "records_made": len(new),
            "records_resumed": len(records) - len(new),
            "inversion_process_seconds": inversion,
            "metrics_and_writing_process_seconds": max(0.0, bench_wall * processes - sum(inversion.values())),
            "inversion_process_seconds_all_records": {
                m: sum(r.get("seconds") or 0.0 for r in records if r["method"] == m) for m in names
            },
        }

    def report(self, records: list[dict], timing: dict, start: float) -> AtlasResult:
        """5. The atlas (main process): table with intervals, depth bands, gallery, timing."""
        tic = time.perf_counter()
        layers = self.layers
        training = sorted(
            (r for r in self.store.records() if r.get("kind") == "training"),
            key=lambda r: layers.index(r["layer"]) if r["layer"] in layers else len(layers),
        )
        rows = summarize_intervals(records, layers, self.method_names)
        if self.main:
            self._write(records, rows, training, timing, tic, start)
        if self.state is not None:
            self.state.wait_for_everyone()
        timing.setdefault("tables_and_figures", time.perf_counter() - tic)
        timing.setdefault("total", time.perf_counter() - start)
        return AtlasResult(self.out, records, rows, training, timing)

    def _write(self, records, rows, training, timing, tic, start) -> None:
        out, layers, names, methods = self.out, self.layers, self.names, self.method_names
        split, early_stop, target = self.split, self.early_stop, self.target
        paired = paired_differences(records, layers, methods)
        files = unique_names(names)
        by_name = dict(zip(names, range(len(names))))
        notes = [
            f"Target `{target.name}` ({target.weights}), {len(names)} evaluation images at {self.size}x"
            f"{self.size}; decoders trained on {len(split.train)} other images of the same folder (split seed "
            f"{split.seed}).",
            "Early stopping: "
            + (
                "off."
                if early_stop is None
                else f"an image stops when its loss has not fallen by {early_stop.min_delta:.0%} in "
                f"{early_stop.patience} iterations."
            ),
        ]
        write_depth_bands(rows, out / "atlas_depth.png", layers=layers, methods=methods)

        def reconstruction(r):
            return image_path(out / "bench", r["layer"], r["method"], r["seed"], files[by_name[r["image"]]])

        write_gallery(
            records,
            lambda name: self.images[by_name[name]],
            reconstruction,
            out / "gallery.png",
            layers=layers,
            methods=methods,
        )
        timing["tables_and_figures"] = time.perf_counter() - tic
        timing["total"] = time.perf_counter() - start
        write_atlas_table(rows, paired, out / "results.md", training=training, notes=notes)
        write_json(
            out / "results.json",
            {"rows": rows, "paired": paired, "training": training, "timing": timing, "split": split.settings()},
        )
        write_json(out / "timing.json", timing)
