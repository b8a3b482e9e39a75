"""``diffinv bench`` (methods x layers x seeds on a set of images) and ``diffinv demo`` (its preset).

Both scale out unchanged under ``torchrun --nproc_per_node N -m diffinv bench ...`` or
``accelerate launch --multi_gpu --num_processes N -m diffinv bench ...``: the work items are split
across the processes and the main process writes the merged tables (:mod:`diffinv.jobs.bench`)."""

from __future__ import annotations

from pathlib import Path

from ..jobs.bench import DEFAULT_BATCH_SIZE, run_benchmark, work_items
from ..jobs.distributed import launch_local
from ..targets import DEFAULT_LAYERS
from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="methods x layers x seeds on a set of images: tables, grids, plots")
    _add_arguments(p, demo=False)
    p = sub.add_parser(
        "demo",
        help="the main job: real photos, the real EfficientNet-Lite0, four depths, "
        "every method that needs no trained model (a preset of `bench`)",
    )
    _add_arguments(p, demo=True)


def _add_arguments(p, *, demo: bool) -> None:
    common.add_target_args(p)
    p.add_argument("--layers", nargs="+", default=None, help="default: the target's four default depths")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=common.METHODS + common.HYBRID_METHODS,
        metavar="METHOD",
        help=f"any of {', '.join(common.METHODS)}, or a hybrid "
        f"{'|'.join(common.HYBRID_METHODS)} (default: pixel dip, plus diffusion "
        f"with --model)",
    )
    common.add_image_source_args(p, default_count=4)
    common.add_size_arg(p, scored=True)
    p.add_argument(
        "--seeds",
        type=common.seed_int,
        nargs="+",
        default=[0] if demo else [0, 1],
        help=f"random seeds (default {'0' if demo else '0 1'})",
    )
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images inverted together (default {DEFAULT_BATCH_SIZE}); a work item is one layer, method, "
        f"seed and batch of images, the unit split across processes under torchrun/accelerate launch",
    )
    common.add_workers_arg(p, "auto" if demo else 1)
    common.add_early_stop_args(p, 0, 0.01)
    common.add_overwrite_arg(p)
    common.add_out_arg(
        p,
        "output folder (resumed when it holds a run with the same settings)",
        required=not demo,
        default="demo_out" if demo else None,
    )
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every argument before any model is loaded
    device = common.resolve_device(args.device)
    common.check_out_dir(args.out)
    layers = args.layers or list(DEFAULT_LAYERS.get(args.target, ()))
    if not layers:
        raise common.UsageError(f"`--layers` is required for target {args.target!r} (it has no default layers).")
    methods = args.methods or (["pixel", "dip"] + (["diffusion"] if args.model else []))
    factories = {m: common.inverter_factory(m, args) for m in methods}
    common.check_judge_arg(args)
    count = common.image_count(args, default_count=4)
    fitted = common.fit_workers(
        args,
        common.workers_from_args(args, device, len(work_items(layers, methods, args.seeds, count, args.batch_size))),
        lambda n: common.check_memory_fits(
            args, layers, methods, images=count, batch_size=args.batch_size, processes=n
        ),
    )
    images, names, labels, dataset = common.load_images_and_labels(args, default_count=4)

    # 2. On CPU, several processes with a share of the cores each (--workers, each in the memory estimate):
    #    this command again, under torchrun's launcher, on this machine
    workers = min(
        fitted,
        common.workers_from_args(
            args, device, len(work_items(layers, methods, args.seeds, len(names), args.batch_size))
        ),
    )
    if workers > 1:
        print(f"diffinv {args.command}: {workers} processes on this machine (--workers)")
        return launch_local(args.argv, workers)

    # 3. Target, then the benchmark (resumed, or refused when --out holds other settings); under
    #    torchrun/accelerate launch each process runs its share of the work items on its own device
    state, device, main, target, judge = common.launch_target_and_judge(args, layers, device)
    if main:
        split = f", split across {state.num_processes} processes" if state is not None else ""
        labelled = f", {sum(v is not None for v in labels)} labelled" if labels is not None else ""
        print(
            f"diffinv {args.command}: {len(names)} images{labelled} at {args.size}x{args.size}, target "
            f"{args.target}, judge {args.judge}, layers {', '.join(layers)}, methods {', '.join(methods)}, seeds "
            f"{args.seeds}{split}"
        )
    run_benchmark(
        target,
        images,
        names,
        layers,
        factories,
        args.out,
        seeds=args.seeds,
        batch_size=args.batch_size,
        settings={"dataset": dataset},
        overwrite=args.overwrite,
        state=state,
        labels=labels,
        judge=judge,
        early_stop=common.early_stop_from_args(args),
    )
    if main:
        print((Path(args.out) / "results.md").read_text())
        print(f"wrote {args.out}/grid.png, results.json, results.md, psnr_vs_depth.png, images/")
    return 0
