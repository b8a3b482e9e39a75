"""``diffinv atlas``: the leakage atlas of a target on a folder of images (:mod:`diffinv.jobs.atlas`).

Every depth of the target, white-box methods and decoders trained on a disjoint split of the same
folder, intervals over the evaluation images. Scales out like ``bench`` (``--workers``,
``torchrun``/``accelerate launch``: the decoders train data-parallel, the benchmark's items are shared)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inverters.registry import INVERTERS
from ..io import collect_images
from ..jobs.atlas import DEFAULT_EARLY_STOP, run_atlas, split_images
from ..jobs.bench import DEFAULT_BATCH_SIZE, work_items
from ..jobs.distributed import launch_local
from ..labels import expand_imagefolders
from ..targets import ATLAS_LAYERS, DEFAULT_LAYERS
from . import common

DEFAULT_MAX_STEPS = (
    500  # 8000 crops: 20 passes over a 400-image split; keeps 100 images x 4 layers under 1 h on 2 cores
)


def _train_split(text: str) -> float | int:
    """``--train-split``: a fraction in [0, 1) (``0.8``) or a count of images (``400``)."""
    expected = "expected a fraction in [0, 1) or a count of images"
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None:  # not a count: a fraction
        try:
            fraction = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not 0 <= fraction < 1:
            raise argparse.ArgumentTypeError(f"{expected}, got {text}")
        return fraction
    if value < 0:
        raise argparse.ArgumentTypeError(f"{expected}, got {text}")
    return value


_train_split.__name__ = "a fraction in [0, 1) or a count of images"


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "atlas",
        help="the leakage atlas: every depth, pixel / dip / decoder (trained on a disjoint "
        "split of the folder), many images, 95%% intervals, plots against depth, "
        "a gallery",
    )
    common.add_target_args(p)
    common.add_images_arg(
        p,
        help="image files and/or folders: split into the decoders' training images and the evaluation images",
        required=True,
    )
    p.add_argument(
        "--num-images",
        type=common.positive_int,
        default=None,
        help="evaluation images (default: every image not used for training)",
    )
    p.add_argument(
        "--train-split",
        type=_train_split,
        default=0.8,
        help="the images that train the decoders: a fraction of the folder (0.8, the default) or a count "
        "(400); drawn by --seed, never evaluated, recorded in the manifest",
    )
    p.add_argument("--layers", nargs="+", default=None, help="default: every depth of the target, stem to head")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["pixel", "dip", "decoder"],
        choices=common.METHODS,
        metavar="METHOD",
        help=f"any of {', '.join(common.METHODS)} (default: pixel dip decoder); a method that needs a "
        f"trained model (decoder, mapper) has it trained by the atlas on the training split, one per "
        f"layer",
    )
    common.add_size_arg(p, scored=True)
    p.add_argument(
        "--seed",
        type=common.seed_int,
        default=0,
        help="seed of the split, of the inversions and of the decoders' training (default 0)",
    )
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images inverted together (default {DEFAULT_BATCH_SIZE})",
    )
    common.add_decoder_training_args(p, DEFAULT_MAX_STEPS)
    common.add_workers_arg(p, "auto")
    common.add_early_stop_args(p, DEFAULT_EARLY_STOP.patience, DEFAULT_EARLY_STOP.min_delta)
    common.add_labels_judge_args(p)
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder (resumed when it holds an atlas with the same settings)")
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every argument before any model is loaded
    device = common.resolve_device(args.device)
    common.check_out_dir(args.out)
    layers = args.layers or list(ATLAS_LAYERS.get(args.target, DEFAULT_LAYERS.get(args.target, ())))
    if not layers:
        raise common.UsageError(f"`--layers` is required for target {args.target!r} (it has no default layers).")
    if args.decoder:
        raise common.UsageError("`--decoder`: the atlas trains its own decoders on the training split; leave it out.")
    if args.init:
        raise common.UsageError("`--init`: the atlas runs single methods; leave it out.")
    methods = list(dict.fromkeys(args.methods))
    trained = [m for m in methods if INVERTERS[m].trained_model]  # the atlas trains their models on the split
    factories = {m: common.inverter_factory(m, args) for m in methods if m not in trained}
    files = collect_images(expand_imagefolders(args.images) if args.labels == "imagefolder" else args.images)
    split = split_images(files, args.train_split, seed=args.seed, num_images=args.num_images)
    if trained and not split.train:
        raise common.UsageError(f"`--methods {trained[0]}` needs training images: `--train-split` is 0.")
    trainer = None
    if trained:
        trainer = common.decoder_trainer_from_args(args, device, seed=args.seed)
        common.check_decoder_training_fits(args, trainer, layers)
    early_stop = common.early_stop_from_args(args)
    common.check_judge_arg(args)
    labels = common.labels_from_args(args, split.evaluation)

    # 2. On CPU, several processes with a share of the cores each (--workers), each in the memory estimate
    items = len(work_items(layers, methods, [args.seed], len(split.evaluation), args.batch_size))
    workers = common.workers_from_args(args, device, items)
    if trainer is not None and args.train_batch_size % workers:
        # the decoders train data-parallel over the processes: the global batch is split evenly
        if args.workers != "auto":
            raise common.UsageError(
                f"`--workers` {workers}: the decoders train data-parallel over the processes, so "
                f"`--train-batch-size` {args.train_batch_size} must be divisible by it."
            )
        workers = max(w for w in range(1, workers + 1) if args.train_batch_size % w == 0)
    workers = common.fit_workers(
        args,
        workers,
        lambda n: common.check_memory_fits(
            args, layers, methods, images=len(split.evaluation), batch_size=args.batch_size, processes=n
        ),
        allowed=lambda n: trainer is None or args.train_batch_size % n == 0,
    )
    if workers > 1:
        print(f"diffinv atlas: {workers} processes on this machine (--workers)")
        return launch_local(args.argv, workers)

    # 3. Target, then the atlas (resumed, or refused when --out holds other settings)
    state, device, main, target, judge = common.launch_target_and_judge(args, layers, device)
    if main:
        print(
            f"diffinv atlas: {len(split.evaluation)} evaluation images at {args.size}x{args.size}, "
            f"{len(split.train)} training images (split seed {args.seed}), target {args.target}, "
            f"{len(layers)} layers ({layers[0]} ... {layers[-1]}), methods {', '.join(methods)}"
        )
    result = run_atlas(
        target,
        split,
        layers,
        {**factories, **dict.fromkeys(trained, trainer)},
        args.out,
        size=args.size,
        seeds=[args.seed],
        batch_size=args.batch_size,
        early_stop=early_stop,
        labels=labels,
        judge=judge,
        overwrite=args.overwrite,
        state=state,
    )
    if main:
        print((Path(args.out) / "results.md").read_text())
        t = result.timing
        inversion = ", ".join(f"{m} {s:.0f} s" for m, s in t["inversion_process_seconds"].items())
        print(
            f"time (this run, {t['records_made']} records made, {t['records_resumed']} resumed): decoder training "
            f"{t['decoder_training']:.0f} s, evaluation {t['evaluation']:.0f} s (inversion, process-seconds: "
            f"{inversion}; metrics, features and writing about {t['metrics_and_writing_process_seconds']:.0f} "
            f"process-seconds; {t['processes']} process(es)), tables and figures {t['tables_and_figures']:.0f} s; "
            f"total {t['total']:.0f} s"
        )
        print(
            f"wrote {args.out}/results.md, results.json, atlas_depth.png, gallery.png, timing.json, "
            f"bench/records.jsonl (per image), decoders/"
        )
    return 0
