"""``diffinv extract``: images -> the features of one layer (a self-describing .safetensors file)."""

from __future__ import annotations

from ..features import FeatureSet
from ..io import collect_images, load_images
from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("extract", help="images -> features of one layer (safetensors)")
    p.add_argument("paths", nargs="*", metavar="IMAGE", help="image files and/or folders (or use --images)")
    common.add_images_arg(p)
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="layer name (run with an unknown name to list them)")
    common.add_size_arg(p)
    common.add_out_arg(p, "output .safetensors file")
    common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    paths = [*args.paths, *(args.images or [])]
    if not paths:
        raise common.UsageError("no images: give image files or folders (positional or `--images`).")
    device = common.resolve_device(args.device)
    out = common.check_out_file(args.out)
    files = collect_images(paths)
    common.check_memory_fits(args, args.layer, [], images=len(files))
    target = common.target_from_args(args, args.layer, device)
    images = load_images(files, args.size).to(device)
    fs = FeatureSet.extract(target, images, args.layer, sources=[str(p) for p in files])
    path = fs.save(out)
    print(
        f"wrote {path}: {len(fs)} x {tuple(fs.features.shape[1:])} features of {args.target}.{args.layer} "
        f"(weights {target.weights}, fingerprint {target.weights_fingerprint()})"
    )
    return 0
