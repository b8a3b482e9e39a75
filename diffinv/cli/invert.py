"""``diffinv invert``: a feature file -> reconstructions (one PNG per feature map) and metrics.json."""

from __future__ import annotations

import hashlib
import json

import torch

from ..features import FeatureSet
from ..io import load_images, save_image, write_json
from ..jobs.store import unique_names
from ..metrics import psnr, ssim, top1_agreement
from ..targets import TargetNetwork
from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("invert", help="features -> reconstructed images (PNG) and metrics")
    p.add_argument("features", help="a .safetensors file written by `diffinv extract`")
    p.add_argument(
        "--method",
        default="dip",
        choices=common.METHODS + common.HYBRID_METHODS,
        help="inversion method (default dip); START+REFINER = --method REFINER --init START",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="target weights (default: those recorded in the features): 'default', 'random:SEED' or a file",
    )
    p.add_argument(
        "--reference",
        nargs="+",
        default=None,
        help="the original images, in the features' order, to score the reconstructions",
    )
    p.add_argument("--seed", type=common.seed_int, default=0, help="random seed (default 0)")
    common.add_out_arg(p, "output folder")
    common.add_method_args(p)
    p.set_defaults(func=run)


def output_files(sources: list[str], method: str, max_bytes: int = 120) -> list[str]:
    """One PNG name per feature map: ``{stem}_{method}.png`` (:func:`~diffinv.jobs.store.unique_names`), a stem
    longer than ``max_bytes`` cut and marked with a hash of the whole, so that every name fits a file system's
    255 bytes (a label of 4096 characters is a valid source)."""
    files = []
    for name in unique_names(sources):
        if len(name.encode()) > max_bytes:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name.encode()[: max_bytes - 9].decode(errors='ignore')}-{digest}"
        files.append(f"{name}_{method}.png")
    return files


def run(args) -> int:
    # 1. Check every argument before any model is loaded
    device = common.resolve_device(args.device)
    out_dir = common.check_out_dir(args.out)
    fs = FeatureSet.load(args.features)
    if args.reference and len(args.reference) != len(fs):
        raise common.UsageError(
            f"`--reference` got {len(args.reference)} images for {len(fs)} feature maps; give one per map, "
            f"in the order of the features' sources."
        )
    files = output_files(fs.sources or [f"image_{i}" for i in range(len(fs))], args.method)
    make_inverter = common.inverter_factory(args.method, args)
    common.check_memory_fits(
        args,
        fs.layer,
        [args.method],
        images=len(fs) * (2 if args.reference else 1),
        batch_size=len(fs),
        target=fs.target,
        size=fs.input_size,
        input_size=fs.preprocessing.get("input_size"),
    )
    references = load_images(args.reference, fs.input_size).to(device) if args.reference else None

    # 2. The target that made the features (its weights checked), then the inversion
    if args.weights is None:
        target = fs.to_target()
    else:
        size = fs.preprocessing.get("input_size")
        target = TargetNetwork.from_name(
            fs.target, fs.layer, weights=args.weights, input_size=tuple(size) if size else None
        )
    target = target.to(device)
    fs.check(target)
    inverter = make_inverter(target)
    out = inverter.invert(fs, generator=torch.Generator().manual_seed(args.seed))
    for image, file in zip(out.images, files):
        save_image(image, out_dir / file)
    summary = {
        "method": args.method,
        "hybrid": inverter.hybrid,
        "settings": inverter.settings(),
        "seed": args.seed,
        "layer": fs.layer,
        "target": target.identity(),
        "seconds": out.seconds,
        "feature_residual": out.feature_residual.tolist(),
        "sources": fs.sources,
        "files": files,
    }
    if references is not None:
        recon = out.images.to(device)
        agree = top1_agreement(target, recon, references)
        summary.update(
            psnr=psnr(recon, references).tolist(),
            ssim=ssim(recon, references).tolist(),
            top1_agreement=None if agree is None else agree.tolist(),
        )
    write_json(out_dir / "metrics.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("sources", "files", "settings")}, indent=1))
    return 0
