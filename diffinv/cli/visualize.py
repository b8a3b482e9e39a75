"""``diffinv visualize``: feature visualization (activation maximization) of channels of one layer.

Writes ``grid.png`` (one tile per channel), ``tiles/``, ``results.json`` and ``results.md``: each
channel's reached activation next to its maximum over natural images (``--images``/``--dataset``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..datasets import DATASETS, load_dataset
from ..interpret.priors import PRIORS
from ..io import collect_images, load_images, pixels_fingerprint, save_image, write_json
from ..jobs.store import RunStore
from . import common

OUTPUTS = ("grid.png", "results.json", "results.md", "tiles")


# ---------------------------------------------------------------------- natural images (visualize, dead-filters)
def add_source_args(p, *, default_datasets=("skimage", "foolbox-imagenet")) -> None:
    """``--images`` or ``--dataset`` (several built-in sets), and ``--num-images``."""
    source = p.add_mutually_exclusive_group()
    common.add_images_arg(source, help="natural images: files and/or folders")
    source.add_argument(
        "--dataset",
        nargs="+",
        default=list(default_datasets),
        choices=DATASETS,
        metavar="NAME",
        help=f"built-in natural images, one or more of {', '.join(DATASETS)} (default: {' '.join(default_datasets)})",
    )
    p.add_argument(
        "--num-images",
        type=common.positive_int,
        default=None,
        help="use at most this many natural images (default: all)",
    )


def source_description(args) -> dict:
    return {"images": [str(p) for p in args.images]} if args.images else {"dataset": list(args.dataset)}


def image_batches(args, size: int, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """``(number of images, iterator over batches)``: files are read a batch at a time (memory independent
    of their number). Raises before any work when there are no images."""
    if args.images:
        files = collect_images(args.images)[: args.num_images]
        if not files:
            raise common.UsageError(f"`--images` {' '.join(args.images)}: no image files; the dataset is empty.")
        return len(files), (load_images(files[i : i + batch_size], size) for i in range(0, len(files), batch_size))
    images = torch.cat([load_dataset(name, size)[0] for name in args.dataset])[: args.num_images]
    if len(images) == 0:
        raise common.UsageError(f"`--dataset` {' '.join(args.dataset)}: no images; the dataset is empty.")
    return len(images), (images[i : i + batch_size] for i in range(0, len(images), batch_size))


def load_source(args, size: int) -> torch.Tensor:
    """Every natural image of ``--images``/``--dataset`` as one batch."""
    _, batches = image_batches(args, size, 64)
    return torch.cat(list(batches))


# ---------------------------------------------------------------------- the command
def add_parsers(sub) -> None:
    p = sub.add_parser("visualize", help="feature visualization: images that maximize channels of a layer")
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="a layer whose output is a feature map (e.g. blocks.4)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--channels", type=common.non_negative_int, nargs="+", help="channel indices")
    which.add_argument(
        "--top",
        type=common.positive_int,
        help="the N channels with the highest mean activation over the natural images",
    )
    p.add_argument(
        "--objective",
        choices=("channel", "neuron"),
        default="channel",
        help="channel: mean activation of the channel (default); neuron: its activation at the centre",
    )
    p.add_argument("--method", choices=tuple(PRIORS), default="pixel", help="the image prior (default pixel)")
    p.add_argument(
        "--param",
        choices=("fourier", "pixel"),
        default="fourier",
        help="pixel: decorrelated Fourier/colour space (default) or plain pixels",
    )
    p.add_argument("--no-transforms", action="store_true", help="no random jitter/scale/rotate/pad")
    p.add_argument("--iterations", type=common.positive_int, default=256, help="optimization iterations (default 256)")
    p.add_argument(
        "--learning-rate",
        type=common.positive_float,
        default=None,
        help="Adam step size (default: " + ", ".join(f"{n} {p.learning_rate}" for n, p in PRIORS.items()) + ")",
    )
    p.add_argument(
        "--model", default=None, help="diffusion: a diffusers Stable Diffusion folder, or tiny/sd15/sd-turbo"
    )
    p.add_argument("--prompt", default="", help="diffusion: text prompt (default none)")
    p.add_argument("--steps", type=common.positive_int, default=1, help="diffusion: sampler steps K (default 1)")
    add_source_args(p)
    common.add_size_arg(p)
    p.add_argument("--seed", type=common.seed_int, default=0, help="random seed (default 0)")
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder: grid.png, tiles/, results.json, results.md")
    common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interpret import channel, channel_activations, check_channels, check_layer, neuron, top_channels, visualize
    from ..interpret.visualize import DEFAULT_LEARNING_RATES

    # 1. Check every argument before the optimization
    device = common.resolve_device(args.device)
    out_dir = common.check_out_dir(args.out)
    prior = PRIORS[args.method]
    if prior.needs_pipeline:
        if not args.model:
            raise common.UsageError(
                f"`--method {args.method}` needs `--model PATH` (a diffusers Stable Diffusion folder; "
                "`--model tiny` builds random weights to try the path)."
            )
        common.check_model_arg(args.model)
    if prior.size_multiple > 1 and args.size % prior.size_multiple:
        m = prior.size_multiple
        raise common.UsageError(
            f"`--size` {args.size}: the {args.method} method needs a multiple of {m}, e.g. "
            f"{max(m, args.size // m * m)}."
        )
    common.check_memory_fits(args, args.layer, [args.method], images=len(args.channels or ()) or args.top)
    target = common.target_from_args(args, args.layer, device)
    num_channels = check_layer(target, args.layer)
    if args.channels:
        check_channels(args.channels, num_channels, args.layer)
    if args.top and args.top > num_channels:
        raise common.UsageError(f"`--top` {args.top}: layer {args.layer!r} has only {num_channels} channels.")
    natural = load_source(args, args.size)

    # 2. Channels, and their maxima over the natural images
    means = channel_activations(target, args.layer, natural, progress=True)
    channels = list(args.channels) if args.channels else top_channels(means, args.top)
    reference = (
        means if args.objective == "channel" else channel_activations(target, args.layer, natural, reduce="max")
    )
    natural_max = reference[:, channels].max(0)
    objective = (channel if args.objective == "channel" else neuron)(args.layer, channels)
    settings = {
        "target": target.identity(),
        "layer": args.layer,
        "channels": channels,
        "objective": args.objective,
        "method": args.method,
        "param": args.param if prior.takes_param else None,
        "transforms": not args.no_transforms,
        "iterations": args.iterations,
        "learning_rate": args.learning_rate or DEFAULT_LEARNING_RATES[args.method],
        "size": args.size,
        "seed": args.seed,
        "natural_images": {
            **source_description(args),
            "count": len(natural),
            "fingerprint": pixels_fingerprint(natural),
        },
        "model": args.model,
        "prompt": args.prompt,
        "steps": args.steps,
    }
    store = RunStore(out_dir, "visualize", settings, overwrite=args.overwrite, outputs=OUTPUTS)
    records = {r["channel"]: r for r in store.records()}

    # 3. The optimization (skipped when a finished run with these settings is resumed)
    if any(c not in records for c in channels):
        pipeline = None
        if prior.needs_pipeline:
            from ..pipelines import load_pipeline

            pipeline = load_pipeline(args.model, device=str(device)).set_target(target, layer=args.layer)
        print(
            f"diffinv visualize: {len(channels)} channels of {args.target}.{args.layer} with {args.method}, "
            f"{args.iterations} iterations at {args.size}x{args.size}"
        )
        out = visualize(
            target,
            objective,
            len(channels),
            size=(args.size, args.size),
            method=args.method,
            param=args.param,
            iterations=args.iterations,
            learning_rate=args.learning_rate,
            transforms=None if args.no_transforms else "standard",
            pipeline=pipeline,
            prompt=args.prompt,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(args.seed),
        )
        for i, c in enumerate(channels):
            file = save_image(out.images[i], out_dir / "tiles" / f"channel_{c:04d}.png")
            reached, best = float(out.values[i]), float(natural_max.values[i])
            store.append(
                {
                    "channel": c,
                    "reached": reached,
                    "natural_max": best,
                    "ratio": reached / best if best > 0 else None,
                    "natural_argmax": int(natural_max.indices[i]),
                    "file": file.relative_to(out_dir).as_posix(),
                    "seconds": out.seconds / len(channels),
                    "skipped_steps": out.info["skipped_steps"],
                }
            )
        records = {r["channel"]: r for r in store.records()}

    # 4. Grid, JSON and markdown table
    rows = [records[c] for c in channels]
    write_json(out_dir / "results.json", {"settings": settings, "records": rows})
    table = results_table(rows, settings)
    (out_dir / "results.md").write_text(table, encoding="utf-8")
    write_tile_grid(out_dir, rows, size=args.size)
    print(table)
    print(f"wrote {out_dir}/grid.png, tiles/, results.json, results.md")
    return 0


def results_table(rows, settings) -> str:
    lines = ["| channel | reached activation | max over natural images | ratio |", "|---|---|---|---|"]
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['channel']} | {r['reached']:.3f} | {r['natural_max']:.3f} | {ratio} |")
    what = "mean activation over positions" if settings["objective"] == "channel" else "activation at the centre"
    method = settings["method"] + (f" ({settings['param']})" if settings["param"] else "")
    return (
        "\n".join(lines) + f"\n\n{method}, "
        f"{settings['iterations']} iterations, {settings['size']}x{settings['size']}; activation = the channel's {what} "
        f"(natural: max over {settings['natural_images']['count']} images of the channel's "
        f"{'mean' if settings['objective'] == 'channel' else 'maximum over positions'}).\n"
    )


def write_tile_grid(out_dir, rows, columns: int = 4, *, size: int):
    from PIL import Image, ImageDraw

    from ..io import atomic_path, load_image, to_pil

    tiles = [to_pil(load_image(out_dir / r["file"], max_pixels=size * size)) for r in rows]  # this run's own tiles
    zoom = max(1, -(-128 // tiles[0].width))  # small tiles are enlarged (nearest) so that their labels fit
    tiles = [t.resize((t.width * zoom, t.height * zoom), Image.NEAREST) for t in tiles]
    h, w = tiles[0].height, tiles[0].width
    label = 16
    cols = min(columns, len(tiles))
    nrows = -(-len(tiles) // cols)
    grid = Image.new("RGB", (cols * w, nrows * (h + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (r, tile) in enumerate(zip(rows, tiles)):
        x, y = (i % cols) * w, (i // cols) * (h + label)
        ratio = "" if r["ratio"] is None else f" ({r['ratio']:.1f}x)"
        draw.text((x + 3, y + 2), f"ch {r['channel']}: {r['reached']:.1f}{ratio}", fill="black")
        grid.paste(tile, (x, y + label))
    with atomic_path(out_dir / "grid.png") as tmp:
        grid.save(tmp, format="PNG", optimize=True)
    return out_dir / "grid.png"
