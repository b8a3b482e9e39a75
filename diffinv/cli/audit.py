"""``diffinv audit``: the privacy–utility curve of a split point (:mod:`diffinv.jobs.audit`).

Scales out unchanged under ``torchrun``/``accelerate launch`` (work items split across the
processes; decoders trained data-parallel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datasets import load_image_files, offline_training_sources
from ..defenses import DefenseTrainConfig, parse_defenses
from ..inverters.registry import INVERTERS
from ..io import collect_images
from ..jobs.atlas_split import split_images
from ..jobs.audit import run_audit
from ..jobs.bench import DEFAULT_BATCH_SIZE
from ..labels import expand_imagefolders
from ..targets import DEFAULT_LAYERS
from . import common

DEFAULT_DEFENSES = ("none", "noise:0.1,0.3,1.0", "quantize:8,4,2", "prune:0.5", "topk:0.1")


def _train_split(text: str) -> float | int:
    """``--train-split``: a fraction in [0, 1) or a count of images."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1) or a count of images, got {text!r}") from None


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="privacy audit of a split point: defenses, utility, naive and adaptive attacks, "
        "the privacy-utility curve",
    )
    common.add_target_args(p)
    p.add_argument(
        "--layers",
        "--layer",
        nargs="+",
        default=None,
        dest="layers",
        help="split point(s) (default: the target's first and third default depths)",
    )
    p.add_argument(
        "--defenses",
        nargs="+",
        default=list(DEFAULT_DEFENSES),
        metavar="DEFENSE",
        help="settings: none, noise:S (std relative to the features' std), quantize:BITS, prune:FRACTION "
        "(of channels), topk:FRACTION (of entries); several strengths with commas (noise:0.1,0.3); "
        "compose with + (prune:0.5+noise:0.1); learned (trained on --train-split with --labels): "
        "nopeek:ALPHA, shredder:LAMBDA, adversarial:LAMBDA (default: " + " ".join(DEFAULT_DEFENSES) + ")",
    )
    p.add_argument(
        "--train-split",
        type=_train_split,
        default=None,
        help="with --images and --labels: the images that train the learned defenses and the decoders, a "
        "fraction (0.8) or a count (400), drawn by seed 0 as in the atlas; the others (at most "
        "--num-images) are audited",
    )
    defaults = DefenseTrainConfig()
    p.add_argument(
        "--defense-steps",
        type=common.positive_int,
        default=defaults.steps,
        help=f"most optimizer steps of a learned defense (default {defaults.steps}; early stopping)",
    )
    p.add_argument(
        "--defense-batch-size",
        type=common.positive_int,
        default=defaults.batch_size,
        help=f"images per step of a learned defense (default {defaults.batch_size})",
    )
    p.add_argument(
        "--defense-lr",
        type=float,
        default=defaults.learning_rate,
        help=f"learning rate of a fine-tuned client (default {defaults.learning_rate:g})",
    )
    p.add_argument(
        "--defense-patience",
        type=int,
        default=defaults.patience,
        help=f"stop a learned defense after this many steps without improvement (default "
        f"{defaults.patience}; 0: never)",
    )
    p.add_argument(
        "--utility",
        choices=("auto", "accuracy", "agreement"),
        default="auto",
        help="utility of a setting: top-1 accuracy on the true labels (agreement beside it, and the "
        "privacy-utility frontier in the report) or agreement with the undefended network; auto "
        "(default): accuracy with labels and a learned defense",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["pixel", "dip"],
        choices=common.METHODS,
        metavar="METHOD",
        help=f"attacks, any of {', '.join(common.METHODS)} (default: pixel dip); a method that needs a "
        f"trained model (decoder) has it trained by the audit on --train-images (clean features: the "
        f"naive attacker; defended: the adaptive one); one that does not optimize through the "
        f"defense (diffusion) is a naive attacker only",
    )
    common.add_image_source_args(p, default_count=8)
    common.add_size_arg(p, scored=True)
    p.add_argument("--seeds", type=common.seed_int, nargs="+", default=[0], help="random seeds (default 0)")
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images attacked together (default {DEFAULT_BATCH_SIZE}): a work item is one layer, defense, "
        f"method, attacker, seed and batch of images",
    )
    p.add_argument(
        "--train-images",
        nargs="+",
        default=None,
        help="decoder: training image files and/or folders (default: the offline training photos, foolbox's "
        "ImageNet samples and grace_hopper.jpg, minus the audited images)",
    )
    common.add_decoder_training_args(p, 300)
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder (resumed when it holds an audit with the same settings)")
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every argument before any model is loaded
    device = common.resolve_device(args.device)
    common.check_out_dir(args.out)
    try:
        defenses = parse_defenses(args.defenses)
    except ValueError as err:
        raise common.UsageError(f"`--defenses`: {err}") from None
    try:
        defense_config = DefenseTrainConfig(
            steps=args.defense_steps,
            batch_size=args.defense_batch_size,
            learning_rate=args.defense_lr,
            patience=args.defense_patience,
        )
    except ValueError as err:
        raise common.UsageError(f"`--defense-*`: {err}") from None
    layers = args.layers or list(DEFAULT_LAYERS.get(args.target, ()))[0:3:2]
    if not layers:
        raise common.UsageError(f"`--layers` is required for target {args.target!r} (it has no default layers).")
    if args.decoder:
        raise common.UsageError(
            "`--decoder`: the audit trains its own decoders (clean and per defense) on "
            "--train-images; leave --decoder out."
        )
    trained = [m for m in args.methods if INVERTERS[m].trained_model]  # the audit trains their models
    methods = {m: common.inverter_factory(m, args) for m in args.methods if m not in trained}
    common.check_judge_arg(args)
    count = common.image_count(args, default_count=8)
    common.check_memory_fits(args, layers, args.methods, images=count, batch_size=args.batch_size)
    split, train, train_labels = None, None, None
    if args.train_split is not None:
        if not args.images or args.labels is None:
            raise common.UsageError(
                "`--train-split` splits the labelled files of `--images`; give --images and --labels."
            )
        files = collect_images(expand_imagefolders(args.images) if args.labels == "imagefolder" else args.images)
        try:
            split = split_images(files, args.train_split, seed=0, num_images=args.num_images)
        except ValueError as err:
            raise common.UsageError(f"`--train-split` {args.train_split!r}: {err}") from None
        labels = common.labels_from_args(args, split.evaluation)
        train_labels = common.labels_from_args(args, split.train)
        images, names = load_image_files(split.evaluation, args.size)
        train, _ = load_image_files(split.train, args.size) if split.train else (None, None)
        dataset = {"files": "split", **split.settings()}
    else:
        if any(d.learned for d in defenses):
            raise common.UsageError(
                f"`--defenses` {next(d.spec for d in defenses if d.learned)}: a learned defense "
                f"trains on labelled images: give --images, --labels and --train-split."
            )
        images, names, labels, dataset = common.load_images_and_labels(args, default_count=8)
    if any(d.learned for d in defenses) and (train is None or any(v is None for v in train_labels)):
        raise common.UsageError(
            "`--train-split`: the learned defenses need labelled training images (every file of "
            "the split with its --labels class)."
        )
    if args.utility == "accuracy" and labels is None:
        raise common.UsageError("`--utility accuracy` needs true labels (--labels, or --dataset foolbox-imagenet).")
    if trained:
        train_images = args.train_images
        if train_images is None and split is not None:
            train_images = list(split.train)
        if train_images is None:
            audited = {Path(n).name for n in names}
            train_images = [f for f in offline_training_sources()[0] if Path(f).name not in audited]
        elif not collect_images(train_images):
            raise common.UsageError(f"`--train-images` {train_images!r} holds no image files.")
        if not train_images:
            raise common.UsageError("`--train-images`: no training images left (the audited images are held out).")
        trainer = common.decoder_trainer_from_args(
            args, device, images=[str(f) for f in train_images], val_fraction=0.0
        )
        common.check_decoder_training_fits(args, trainer, layers)
        methods.update(dict.fromkeys(trained, trainer))

    # 2. Target, then the audit (resumed, or refused when --out holds other settings)
    state, device, main, target, judge = common.launch_target_and_judge(args, layers, device)
    if main:
        split = f", split across {state.num_processes} processes" if state is not None else ""
        print(
            f"diffinv audit: {len(names)} images at {args.size}x{args.size}, target {args.target}, layers "
            f"{', '.join(layers)}, defenses {' '.join(d.spec for d in defenses)}, methods "
            f"{', '.join(args.methods)}, judge {args.judge}{split}"
        )
    run_audit(
        target,
        images,
        names,
        layers,
        defenses,
        methods,
        args.out,
        seeds=args.seeds,
        batch_size=args.batch_size,
        settings={"dataset": dataset},
        overwrite=args.overwrite,
        state=state,
        labels=labels,
        judge=judge,
        train_images=train,
        train_labels=train_labels,
        defense_training=defense_config,
        utility=None if args.utility == "auto" else args.utility,
    )
    if main:
        print((Path(args.out) / "report.md").read_text())
        print(f"wrote {args.out}/report.json, report.md, privacy_utility.png, grid_LAYER.png, images/")
    return 0
