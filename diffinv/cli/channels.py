"""``diffinv channels``: per-channel inversion of one image (only the chosen channel kept), with heat maps.

Writes ``reconstructions/``, ``heatmaps/`` (the channel's activation over the image), ``channels.png``
(per channel: heat-map overlay | reconstruction) and ``results.json``.
"""

from __future__ import annotations

import torch

from ..io import atomic_path, load_image, pixels_fingerprint, save_image, to_pil, write_json
from ..jobs.store import RunStore
from . import common

OUTPUTS = ("reconstructions", "heatmaps", "channels.png", "results.json")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "channels", help="per-channel inversion of an image: each chosen channel alone, with its heat map"
    )
    p.add_argument("image", help="an image file")
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="a layer whose output is a feature map (e.g. blocks.4)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--channels", type=common.non_negative_int, nargs="+", help="channel indices")
    which.add_argument(
        "--top", type=common.positive_int, help="the N channels most active on the image (mean activation)"
    )
    p.add_argument("--method", default="pixel", choices=common.METHODS, help="inversion method (default pixel)")
    common.add_size_arg(p)
    p.add_argument("--seed", type=common.seed_int, default=0, help="random seed (default 0)")
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder: reconstructions/, heatmaps/, channels.png, results.json")
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interpret import (
        channel_activations,
        check_channels,
        check_layer,
        invert_channels,
        local_energy,
        pearson,
        top_channels,
    )

    # 1. Check every argument before the inversion
    device = common.resolve_device(args.device)
    out_dir = common.check_out_dir(args.out)
    make_inverter = common.inverter_factory(args.method, args)
    common.check_memory_fits(args, args.layer, [args.method], images=len(args.channels or ()) or args.top)
    image = load_image(args.image, args.size)
    target = common.target_from_args(args, args.layer, device)
    num_channels = check_layer(target, args.layer)
    if args.channels:
        check_channels(args.channels, num_channels, args.layer)
    if args.top and args.top > num_channels:
        raise common.UsageError(f"`--top` {args.top}: layer {args.layer!r} has only {num_channels} channels.")
    inverter = make_inverter(target)
    inverter.check_image_size((args.size, args.size))
    channels = (
        list(args.channels)
        if args.channels
        else top_channels(channel_activations(target, args.layer, image[None]), args.top)
    )
    settings = {
        "target": target.identity(),
        "layer": args.layer,
        "channels": channels,
        "image": args.image,
        "image_fingerprint": pixels_fingerprint(image[None]),
        "size": args.size,
        "seed": args.seed,
        "inverter": inverter.settings(),
    }
    store = RunStore(out_dir, "channels", settings, overwrite=args.overwrite, outputs=OUTPUTS)
    records = {r["channel"]: r for r in store.records()}

    # 2. One inversion per channel (one batch), heat maps, the measure
    if any(c not in records for c in channels):
        print(
            f"diffinv channels: {len(channels)} channels of {args.target}.{args.layer} ({channels}), method {args.method}"
        )
        result = invert_channels(
            inverter,
            image,
            args.layer,
            channels,
            source=args.image,
            generator=torch.Generator().manual_seed(args.seed),
        )
        energy = local_energy(result.images)
        corr = pearson(result.heat_maps, energy)
        for i, c in enumerate(channels):
            recon = save_image(result.images[i], out_dir / "reconstructions" / f"channel_{c:04d}.png")
            heat = save_image(result.overlays[i], out_dir / "heatmaps" / f"channel_{c:04d}.png")
            store.append(
                {
                    "channel": c,
                    "activation": float(result.activations[i]),
                    "reconstruction": recon.relative_to(out_dir).as_posix(),
                    "heatmap": heat.relative_to(out_dir).as_posix(),
                    "heat_energy_correlation": float(corr[i]),
                    "feature_residual": float(result.output.feature_residual[i]),
                    "seconds": result.output.seconds / len(channels),
                }
            )
        records = {r["channel"]: r for r in store.records()}
    rows = [records[c] for c in channels]
    write_json(
        out_dir / "results.json",
        {
            "settings": settings,
            "records": rows,
            "measure": "heat_energy_correlation: Pearson correlation between the "
            "channel's heat map and the local energy of its reconstruction "
            "(squared deviation from the 9x9 local mean, 9x9 average)",
        },
    )
    _pair_grid(out_dir, rows, args.size)
    for r in rows:
        print(
            f"channel {r['channel']}: activation {r['activation']:.3f}, heat map vs reconstruction energy "
            f"r = {r['heat_energy_correlation']:.3f}"
        )
    print(f"wrote {out_dir}/channels.png, reconstructions/, heatmaps/, results.json")
    return 0


def _pair_grid(out_dir, rows, size: int):
    from PIL import Image, ImageDraw

    own = size * size  # this run's own images: not subject to the user's image limit
    pairs = [
        (load_image(out_dir / r["heatmap"], max_pixels=own), load_image(out_dir / r["reconstruction"], max_pixels=own))
        for r in rows
    ]
    h, w = pairs[0][0].shape[-2:]
    label = 16
    grid = Image.new("RGB", (2 * w, len(rows) * (h + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (r, (heat, recon)) in enumerate(zip(rows, pairs)):
        y = i * (h + label)
        draw.text((3, y + 2), f"channel {r['channel']}: heat map | reconstruction", fill="black")
        grid.paste(to_pil(heat), (0, y + label))
        grid.paste(to_pil(recon), (w, y + label))
    with atomic_path(out_dir / "channels.png") as tmp:
        grid.save(tmp, format="PNG")
