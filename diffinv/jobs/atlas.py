"""The leakage atlas of a target: every depth, white-box and black-box methods, many images, intervals.

:func:`run_atlas` splits a folder of images, deterministically by a seed, into the images the
decoders train on and the evaluation images (:func:`split_images`; disjoint, both lists recorded
in the manifest), trains one decoder per layer on the training part
(:func:`~diffinv.jobs.training.train_decoder`), runs the benchmark
(:func:`~diffinv.jobs.bench.run_benchmark`: every layer x method x seed on the evaluation images,
one record per image, ``--workers`` / ``torchrun`` scale-out) and writes the atlas: the table with
95 % bootstrap intervals, the metrics against depth with interval bands, and the best / median /
worst gallery (:mod:`diffinv.jobs.atlas_report`).

The run folder is a run store (kind ``atlas``) holding two more: ``decoders/LAYER/`` (each a
training run) and ``bench/`` (the per-image records, ``bench/records.jsonl``, and the
reconstructions). Running the same command again resumes: a layer whose decoder finished is not
trained again, finished records are kept; other settings are refused.

Example:
    >>> split = split_images(collect_images(["photos/"]), 0.8, seed=0)
    >>> result = run_atlas(target, split, ["blocks.1", "blocks.6"], {"pixel": PixelInverter},
    ...                    "atlas_out", trainer=TrainConfig(out="", layer="", max_steps=500))
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..datasets import load_image_files
from ..inverters import DecoderInverter, Inverter
from ..io import write_json
from ..optimization import EarlyStopping
from ..targets import TargetNetwork
from .atlas_report import paired_differences, summarize_intervals, write_atlas_table, write_depth_bands, write_gallery
from .bench import DEFAULT_BATCH_SIZE, image_path, run_benchmark
from .store import RunStore, unique_names
from .training import TrainConfig, train_decoder, with_resolved_precision

__all__ = ["AtlasResult", "AtlasSplit", "DEFAULT_EARLY_STOP", "run_atlas", "split_images"]

OUTPUTS = ("decoders", "bench", "results.md", "results.json", "atlas_depth.png", "gallery.png", "timing.json")
# The atlas's default early stopping: an image stops when its loss has not fallen by 1 % in 40 iterations.
DEFAULT_EARLY_STOP = EarlyStopping(patience=40, min_delta=0.01)
# At most this many training images validate each decoder (``TrainConfig.val_fraction`` of them, held out).
_MAX_VAL_IMAGES = 16
# TrainConfig fields that the atlas sets itself, or that do not define a decoder (not in its manifest).
_NOT_TRAINING_SETTINGS = ("out", "layer", "kind", "target", "weights", "images", "val_images", "size", "overwrite",
                          "device", "progress", "checkpoint_every", "keep_checkpoints", "val_every", "model",
                          "pixel_weight", "defense")


@dataclass(frozen=True)
class AtlasSplit:
    """Which images train the decoders and which are evaluated: disjoint, each sorted.

    Attributes:
        train: image files the decoders train on.
        evaluation: image files the atlas inverts and scores.
        train_split: what was asked (a fraction of the folder, or a count of images).
        seed: the seed of the shuffle that made the split.
    """

    train: tuple[str, ...]
    evaluation: tuple[str, ...]
    train_split: float | int
    seed: int

    def settings(self) -> dict:
        """For the manifest: the request, the seed and both lists."""
        return {"train_split": self.train_split, "seed": self.seed, "train": list(self.train),
                "evaluation": list(self.evaluation)}


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


def split_images(files: Sequence[str | os.PathLike], train_split: float | int, *, seed: int = 0,
                 num_images: int | None = None) -> AtlasSplit:
    """Splits ``files`` into training and evaluation images, deterministically by ``seed``.

    The files are shuffled by ``seed``; the first ``train_split`` of them (a fraction in [0, 1), or a
    count) train the decoders, and the next ``num_images`` (default: all the others) are evaluated,
    so that a smaller ``num_images`` draws its evaluation images across the whole folder.

    Raises:
        ValueError: a duplicate file, a ``train_split`` out of range, or no evaluation image left.
    """
    files = [str(f) for f in files]
    if len(set(files)) != len(files):
        raise ValueError("`files` lists some image twice; the split would not be disjoint.")
    if isinstance(train_split, bool) or not isinstance(train_split, (int, float)):
        raise ValueError(f"`train_split` must be a fraction in [0, 1) or a count of images, got {train_split!r}.")
    if isinstance(train_split, float):
        if not 0 <= train_split < 1:
            raise ValueError(f"`train_split` {train_split!r}: a fraction must be in [0, 1) (a count is an integer).")
        count = round(train_split * len(files))
    else:
        count = train_split
    if not 0 <= count < len(files):
        raise ValueError(f"`train_split` {train_split!r} leaves no evaluation image among the {len(files)} images; "
                         f"expected fewer than {len(files)} training images.")
    if num_images is not None and num_images < 1:
        raise ValueError(f"`num_images` must be a positive integer, got {num_images!r}.")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    train, rest = order[:count], order[count:]
    evaluation = rest[:num_images] if num_images is not None else rest
    return AtlasSplit(tuple(sorted(train)), tuple(sorted(evaluation)), train_split, int(seed))


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
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter]],
    out_dir: str | os.PathLike,
    *,
    size: int,
    trainer: TrainConfig | None = None,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH_SIZE,
    early_stop: EarlyStopping | None = DEFAULT_EARLY_STOP,
    labels: Sequence[int | None] | None = None,
    judge=None,
    overwrite: bool = False,
    progress: bool = True,
    state=None,
) -> AtlasResult:
    """Trains the decoders, runs the benchmark and writes the atlas of ``target`` (see the module).

    Args:
        target: the network, fed ``size x size`` images.
        split: the training and evaluation images (:func:`split_images`).
        layers: the layers, shallow to deep.
        methods: name -> an :class:`Inverter` or a factory ``target -> Inverter`` (the white-box methods).
        out_dir: the run folder: ``manifest.json``, ``results.md``, ``results.json``, ``atlas_depth.png``,
            ``gallery.png``, ``timing.json``, ``decoders/LAYER/``, ``bench/`` (per-image records and images).
        size: the image size.
        trainer: adds the method ``decoder``: a :class:`~diffinv.jobs.training.TrainConfig` template
            (steps, batch, width, ...); one decoder per layer is trained on ``split.train`` into
            ``out_dir/decoders/LAYER`` (``out``, ``layer``, ``images``, ``target``, ``weights`` and
            ``size`` are set by the atlas). Without validation sources in the template, ``val_fraction``
            of the training images (at most 16, evenly spread) are held out to validate it.
            ``None``: no decoder.
        seeds, batch_size: as in :func:`~diffinv.jobs.bench.run_benchmark`.
        early_stop: stop an image of an optimizing method when its loss has stopped improving
            (recorded); ``None``: every image runs all its iterations.
        labels: the true class of each evaluation image (``None`` where unknown; :mod:`diffinv.labels`).
        judge: a second network the attack never saw (:class:`~diffinv.judge.Judge`), scoring the
            reconstructions (see :func:`~diffinv.jobs.bench.run_benchmark`).
        overwrite: start afresh in a folder that holds an atlas with other settings.
        state: accelerate's ``PartialState`` under a multi-process launch: the decoders train
            data-parallel, the benchmark's items are shared, the main process writes the atlas.

    Raises:
        ValueError: no layer, a decoder without training images, or an overlap of the split.
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
    """
    # 1. Check inputs
    start = time.perf_counter()
    if not layers:
        raise ValueError("`layers` is empty; give at least one layer.")
    if set(split.train) & set(split.evaluation):
        raise ValueError("`split`: some evaluation images are also training images; use `split_images`.")
    if not split.evaluation:
        raise ValueError("`split` has no evaluation image.")
    if "decoder" in methods:
        raise ValueError("`methods` must not hold 'decoder': the atlas trains its decoders (pass `trainer`).")
    if trainer is not None and not split.train:
        raise ValueError("`trainer` is given but `split` has no training image; use a `train_split` > 0.")
    main = state is None or state.is_main_process
    images, names = load_image_files(list(split.evaluation), size)
    method_names = [*methods, *(["decoder"] if trainer is not None else [])]
    if trainer is not None:
        train, val = list(split.train), []
        explicit = trainer.val_images or trainer.val_videos or trainer.val_samples
        if not explicit and trainer.val_fraction > 0 and len(train) >= 2:
            # the decoders' validation: every k-th training image held out (still none of the evaluation images)
            held = min(_MAX_VAL_IMAGES, max(1, round(trainer.val_fraction * len(train))))
            val = train[:: -(-len(train) // held)][:held]
            train = [f for f in train if f not in set(val)]
        trainer = with_resolved_precision(dataclasses.replace(
            trainer, target=target.name, weights=target.weights, size=size, images=train,
            val_images=val or trainer.val_images, kind="decoder", progress=progress))

    # 2. The atlas's run store: the split, the layers, the methods and the decoders' training
    training_settings = None if trainer is None else {
        k: v for k, v in dataclasses.asdict(trainer).items() if k not in _NOT_TRAINING_SETTINGS}
    manifest = {"target": target.identity(), "layers": list(layers), "methods": method_names,
                "image_size": [size, size], "seeds": list(seeds), "batch_size": int(batch_size),
                "split": split.settings(), "decoder_training": training_settings,
                "early_stop": None if early_stop is None else early_stop.settings()}
    store = RunStore(out_dir, "atlas", manifest, overwrite=overwrite, outputs=OUTPUTS, state=state)
    out = store.folder
    trained = {r["layer"] for r in store.records() if r.get("kind") == "training"}
    if state is not None:
        state.wait_for_everyone()  # every process has read the same finished trainings

    # 3. One decoder per layer, on the training images (skipped when finished; resumed when cut short)
    tic = time.perf_counter()
    for layer in layers if trainer is not None else ():
        folder = out / "decoders" / layer
        if layer in trained and (folder / "config.json").is_file():
            continue
        wall = time.perf_counter()
        result = train_decoder(dataclasses.replace(trainer, out=str(folder), layer=layer))
        if main:
            store.append({"kind": "training", "layer": layer, "steps": result.step,
                          "seconds": result.log["train_seconds"], "wall_seconds": time.perf_counter() - wall,
                          "train_images": result.log["train_items"],
                          "val_images": len(result.log["val_items"]), "val_psnr": result.val_psnr,
                          "val_ssim": result.val_ssim})
    if state is not None:
        state.wait_for_everyone()
    training_wall = time.perf_counter() - tic

    # 4. The benchmark on the evaluation images: per-image records in out/bench
    tic = time.perf_counter()
    earlier = {_key(r) for r in _bench_records(out / "bench")}  # finished before this call
    factories = dict(methods)
    if trainer is not None:
        factories["decoder"] = lambda t: DecoderInverter(t, decoder=out / "decoders")
    records = run_benchmark(target, images, names, layers, factories, out / "bench", seeds=seeds, batch_size=batch_size,
                            settings={"dataset": "files", "split_seed": split.seed}, progress=progress, state=state,
                            early_stop=early_stop, labels=labels, judge=judge)
    bench_wall = time.perf_counter() - tic

    # 5. The atlas (main process): table with intervals, depth bands, gallery, timing
    tic = time.perf_counter()
    training = sorted((r for r in store.records() if r.get("kind") == "training"),
                      key=lambda r: list(layers).index(r["layer"]) if r["layer"] in layers else len(layers))
    rows = summarize_intervals(records, layers, method_names)
    processes = 1 if state is None else state.num_processes
    new = [r for r in records if _key(r) not in earlier]
    inversion = {m: sum(r.get("seconds") or 0.0 for r in new if r["method"] == m) for m in method_names}
    timing = {"decoder_training": training_wall, "evaluation": bench_wall, "processes": processes,
              "records_made": len(new), "records_resumed": len(records) - len(new),
              "inversion_process_seconds": inversion,
              "metrics_and_writing_process_seconds": max(0.0, bench_wall * processes - sum(inversion.values())),
              "inversion_process_seconds_all_records": {
                  m: sum(r.get("seconds") or 0.0 for r in records if r["method"] == m) for m in method_names}}
    if main:
        paired = paired_differences(records, layers, method_names)
        files = unique_names(names)
        by_name = dict(zip(names, range(len(names))))
        notes = [f"Target `{target.name}` ({target.weights}), {len(names)} evaluation images at {size}x{size}; "
                 f"decoders trained on {len(split.train)} other images of the same folder (split seed {split.seed}).",
                 "Early stopping: " + ("off." if early_stop is None else
                                       f"an image stops when its loss has not fallen by {early_stop.min_delta:.0%} in "
                                       f"{early_stop.patience} iterations.")]
        write_depth_bands(rows, out / "atlas_depth.png", layers=list(layers), methods=method_names)

        def reconstruction(r):
            return image_path(out / "bench", r["layer"], r["method"], r["seed"], files[by_name[r["image"]]])

        write_gallery(records, lambda name: images[by_name[name]], reconstruction, out / "gallery.png",
                      layers=list(layers), methods=method_names)
        timing["tables_and_figures"] = time.perf_counter() - tic
        timing["total"] = time.perf_counter() - start
        write_atlas_table(rows, paired, out / "results.md", training=training, notes=notes)
        write_json(out / "results.json", {"rows": rows, "paired": paired, "training": training, "timing": timing,
                                          "split": split.settings()})
        write_json(out / "timing.json", timing)
    if state is not None:
        state.wait_for_everyone()
    timing.setdefault("tables_and_figures", time.perf_counter() - tic)
    timing.setdefault("total", time.perf_counter() - start)
    return AtlasResult(out, records, rows, training, timing)
