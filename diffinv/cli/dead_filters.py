"""``diffinv dead-filters``: channels that never fire, rarely fire or never change, over a set of images.

Streams the images a batch at a time (memory independent of their number) and writes
``report.json``, ``report.md`` and ``histograms.png`` (per layer).
"""

from __future__ import annotations

from . import common
from .visualize import add_source_args, image_batches, source_description

OUTPUTS = ("report.json", "report.md", "histograms.png")


def add_parsers(sub) -> None:
    p = sub.add_parser("dead-filters", help="dead, rarely active and constant channels of layers over a set of images")
    common.add_target_args(p)
    p.add_argument("--layers", nargs="+", required=True, help="layers whose outputs are feature maps")
    add_source_args(p)
    common.add_size_arg(p)
    p.add_argument("--batch-size", type=common.positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument(
        "--eps",
        type=common.non_negative_float,
        default=1e-6,
        help="a channel is active on an image when its maximum there is > EPS (default 1e-6)",
    )
    p.add_argument(
        "--rare-percent",
        type=common.non_negative_float,
        default=1.0,
        help="rarely active: active on fewer than this percentage of the images (default 1)",
    )
    p.add_argument(
        "--variance-eps",
        type=common.non_negative_float,
        default=1e-10,
        help="constant: variance over images and positions <= this (default 1e-10)",
    )
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder: report.json, report.md, histograms.png")
    common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interpret import check_layer, dead_filter_report
    from ..jobs.store import RunStore

    # 1. Check every argument (layers, images) before streaming
    device = common.resolve_device(args.device)
    out_dir = common.check_out_dir(args.out)
    if args.rare_percent > 100:
        raise common.UsageError(f"`--rare-percent` {args.rare_percent:g} is not a percentage in [0, 100].")
    count, batches = image_batches(args, args.size, args.batch_size)
    target = common.target_from_args(args, args.layers, device)
    for layer in args.layers:
        check_layer(target, layer)
    settings = {
        "target": target.identity(),
        "layers": list(args.layers),
        **source_description(args),
        "num_images": count,
        "size": args.size,
        "eps": args.eps,
        "rare_percent": args.rare_percent,
        "variance_eps": args.variance_eps,
    }
    RunStore(out_dir, "dead-filters", settings, overwrite=args.overwrite, outputs=OUTPUTS)

    # 2. Stream, classify, write
    report = dead_filter_report(
        target,
        args.layers,
        batches,
        eps=args.eps,
        rare_fraction=args.rare_percent / 100,
        variance_eps=args.variance_eps,
        total=-(-count // args.batch_size),
    )
    report.settings = {"target": target.identity(), "size": args.size}
    report.write(out_dir)
    print(report.markdown())
    print(f"wrote {out_dir}/report.json, report.md, histograms.png")
    return 0
