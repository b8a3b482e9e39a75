"""The ``diffinv`` command: extract, invert, demo, bench, ... (see ``diffinv COMMAND --help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["main", "build_parser"]

DEMO_LAYERS = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")


def _weights(value: str):
    return None if value == "random" else value


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="tf_efficientnet_lite0",
                   help="resnet50, resnet101, tf_efficientnet_lite0 or any timm model name")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained, from the local cache), 'random', or a state-dict file")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iterations", type=int, default=None, help="optimization steps (method default if omitted)")
    p.add_argument("--model", default=None,
                   help="diffusion model for --method diffusion: a diffusers Stable Diffusion directory, "
                        "or tiny/sd15/sd-turbo for random weights (timing only)")
    p.add_argument("--prompt", default=None, help="text prompt for the diffusion method ('auto': the target's class)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps K of the diffusion method")
    p.add_argument("--mapper", default=None, help="--method mapper: a `diffinv train-mapper` folder (or per-layer folders)")
    p.add_argument("--decoder", default=None, help="--method decoder: a `diffinv train-decoder` folder (or per-layer folders)")
    p.add_argument("--strength", type=float, default=0.0, help="--method mapper: img2img refinement strength (default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinv", description="Reconstruct images from deep-network features.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="images -> features of one layer (safetensors)")
    p.add_argument("images", nargs="+", help="image files")
    _add_target_args(p)
    p.add_argument("--layer", required=True, help="layer name (run with an unknown name to list them)")
    p.add_argument("--size", type=int, default=224, help="images are resized and center-cropped to SIZE x SIZE")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("invert", help="features -> reconstructed images (PNG) and metrics")
    p.add_argument("features", help="a .safetensors file written by `diffinv extract`")
    p.add_argument("--method", default="dip", help="pixel, dip or diffusion")
    p.add_argument("--weights", default="default", help="target weights: 'default', 'random' or a file")
    p.add_argument("--reference", nargs="*", default=None, help="the original images, to score the reconstructions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    _add_method_args(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("demo", help="the main job: real photos, real network, four depths, every method")
    p.add_argument("--out", default="demo_out", help="output folder (resumes what is already there)")
    p.add_argument("--size", type=int, default=128, help="image size (default 128)")
    p.add_argument("--num-images", type=int, default=4, help="how many bundled photos (default 4)")
    p.add_argument("--methods", nargs="+", default=None, help="default: pixel dip (+ diffusion with --model)")
    p.add_argument("--layers", nargs="+", default=list(DEMO_LAYERS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    _add_method_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="methods x layers x seeds on a set of images: tables, grids, plots")
    _add_target_args(p)
    p.add_argument("--layers", nargs="+", default=None, help="default: the target's four default depths")
    p.add_argument("--methods", nargs="+", default=["pixel", "dip"],
                   help="any of diffusion mapper decoder dip pixel")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--images", default=None, help="a folder of image files")
    source.add_argument("--dataset", default="skimage", help="built-in: skimage, foolbox-imagenet")
    p.add_argument("--num-images", type=int, default=4, help="at most this many images (default 4)")
    p.add_argument("--size", type=int, default=128, help="image size (default 128; the protocol uses 224)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", required=True, help="output folder (resumes what is already there)")
    _add_method_args(p)
    p.set_defaults(func=cmd_bench)

    from .training import add_train_arguments, cmd_train_decoder, cmd_train_mapper

    p = sub.add_parser("train-mapper", help="(image, feature) pairs -> a features-to-latent mapper (black-box)")
    add_train_arguments(p, "mapper")
    p.set_defaults(func=cmd_train_mapper)
    p = sub.add_parser("train-decoder", help="(image, feature) pairs -> an UpconvNet decoder (black-box baseline)")
    add_train_arguments(p, "decoder")
    p.set_defaults(func=cmd_train_decoder)

    from .video import cmd_video

    p = sub.add_parser("video", help="a video clip -> temporally smoothed reconstructions (frames, mp4s, metrics)")
    p.add_argument("video", help="a video file FFmpeg can read (mp4, mkv, ...)")
    _add_target_args(p)
    p.add_argument("--layer", required=True, help="layer name (run with an unknown name to list them)")
    p.add_argument("--method", default="pixel", help="pixel, dip or diffusion")
    p.add_argument("--temporal-weight", type=float, default=0.0,
                   help="λ of λ·Σ||z_t - z_(t-1)||² between consecutive frames (default 0: independent frames)")
    p.add_argument("--window", type=int, default=4, help="frames inverted together as one batch (default 4)")
    p.add_argument("--warm-start", choices=("auto", "on", "off"), default="auto",
                   help="start each window from the previous reconstruction (auto: when λ > 0)")
    p.add_argument("--start", type=int, default=0, help="first frame, 0-based (default 0)")
    p.add_argument("--frames", type=int, default=None, help="number of frames to invert (default: to the end)")
    p.add_argument("--stride", type=int, default=1, help="keep every STRIDE-th frame (default 1)")
    p.add_argument("--size", type=int, default=128, help="frames are resized and center-cropped to SIZE x SIZE")
    p.add_argument("--features", default=None, help="features of the selected frames (.safetensors) instead of extracting them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out, skipping finished frames")
    p.add_argument("--no-mp4", action="store_true", help="do not write reconstruction.mp4 and side_by_side.mp4")
    p.add_argument("--out", required=True, help="output folder: frames/, metrics.json, *.mp4")
    _add_method_args(p)
    p.set_defaults(func=cmd_video)
    return parser


def method_factory(name: str, args: argparse.Namespace):
    """Returns ``target -> Inverter`` for a method name and the command-line options."""
    from .inverters import INVERTERS

    extra = {} if args.iterations is None else {"iterations": args.iterations}
    if name == "diffusion":
        if not args.model:
            raise SystemExit("error: `--method diffusion` needs `--model PATH` (a diffusers Stable Diffusion directory).")
        from .inverters.diffusion import DiffusionInverter

        if args.prompt:
            extra["prompt"] = args.prompt
        if args.steps:
            extra["num_inference_steps"] = args.steps
        if "iterations" in extra:
            extra["num_iterations"] = extra.pop("iterations")
        return lambda target: DiffusionInverter(target, model=args.model, device=args.device, **extra)
    if name == "decoder":
        if not args.decoder:
            raise SystemExit("error: `--method decoder` needs `--decoder DIR` (from `diffinv train-decoder`).")
        from .inverters.decoder import DecoderInverter

        return lambda target: DecoderInverter(target, decoder=args.decoder)
    if name == "mapper":
        if not args.mapper:
            raise SystemExit("error: `--method mapper` needs `--mapper DIR` (from `diffinv train-mapper`).")
        from .inverters.mapper import MapperInverter

        refine = {"num_inference_steps": args.steps} if args.steps else {}
        return lambda target: MapperInverter(target, mapper=args.mapper, model=args.model, strength=args.strength,
                                             prompt=args.prompt or "", **refine)
    if name not in INVERTERS:
        raise SystemExit(f"error: `--method` {name!r} is not one of {', '.join([*INVERTERS, 'diffusion', 'mapper', 'decoder'])}.")
    return lambda target: INVERTERS[name](target, **extra)


def cmd_extract(args) -> int:
    from .features import FeatureSet
    from .images import load_images
    from .targets import TargetNetwork

    target = TargetNetwork.from_name(args.target, args.layer, weights=_weights(args.weights),
                                     input_size=(args.size, args.size)).to(args.device)
    images = load_images(args.images, args.size).to(args.device)
    fs = FeatureSet.extract(target, images, args.layer, sources=[str(p) for p in args.images])
    path = fs.save(args.output)
    print(f"wrote {path}: {len(fs)} x {tuple(fs.features.shape[1:])} features of {args.target}.{args.layer}")
    return 0


def cmd_invert(args) -> int:
    from .features import FeatureSet
    from .images import load_images, save_image
    from .metrics import feature_residual, psnr, ssim, top1_agreement

    fs = FeatureSet.load(args.features)
    target = fs.to_target(weights=_weights(args.weights)).to(args.device)
    fs.check(target)
    references = None
    if args.reference:
        if len(args.reference) != len(fs):
            raise SystemExit(f"error: `--reference` got {len(args.reference)} images for {len(fs)} feature maps.")
        references = load_images(args.reference, fs.input_size).to(args.device)
    inverter = method_factory(args.method, args)(target)
    out = inverter.invert(fs, generator=torch.Generator().manual_seed(args.seed))
    out_dir = Path(args.out)
    for image, source in zip(out.images, fs.sources):
        save_image(image, out_dir / f"{Path(source).stem}_{args.method}.png")
    summary = {"method": args.method, "layer": fs.layer, "target": fs.target, "seconds": out.seconds,
               "feature_residual": out.feature_residual.tolist(), "sources": fs.sources}
    if references is not None:
        recon = out.images.to(args.device)
        agree = top1_agreement(target, recon, references)
        summary.update(psnr=psnr(recon, references).tolist(), ssim=ssim(recon, references).tolist(),
                       feature_residual=feature_residual(target, recon, fs.features, fs.layer).tolist(),
                       top1_agreement=None if agree is None else agree.tolist())
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "sources"}, indent=1))
    return 0


def cmd_demo(args) -> int:
    from .bench import run_benchmark
    from .images import SAMPLE_PHOTOS, sample_images
    from .targets import TargetNetwork

    names = list(SAMPLE_PHOTOS[: args.num_images])
    target = TargetNetwork.from_name("tf_efficientnet_lite0", list(args.layers),
                                     input_size=(args.size, args.size)).to(args.device)
    images = sample_images(names, args.size)
    methods = args.methods or (["pixel", "dip"] + (["diffusion"] if args.model else []))
    factories = {m: method_factory(m, args) for m in methods}
    print(f"diffinv demo: {len(names)} photos ({', '.join(names)}) at {args.size}x{args.size}, "
          f"target tf_efficientnet_lite0, layers {', '.join(args.layers)}, methods {', '.join(methods)}")
    run_benchmark(target, images, names, list(args.layers), factories, args.out, seeds=args.seeds,
                  config={"command": "demo", "iterations": args.iterations, "model": args.model})
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/grid.png, {args.out}/results.json, {args.out}/results.md")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmark
    from .datasets import load_dataset, load_folder
    from .targets import DEFAULT_LAYERS, TargetNetwork

    layers = args.layers or list(DEFAULT_LAYERS.get(args.target, ()))
    if not layers:
        raise ValueError(f"`--layers` is required for target {args.target!r} (it has no default layers).")
    if args.images:
        images, names = load_folder(args.images, args.size, limit=args.num_images)
    else:
        images, names, _ = load_dataset(args.dataset, args.size, limit=args.num_images)
    target = TargetNetwork.from_name(args.target, layers, weights=_weights(args.weights),
                                     input_size=(args.size, args.size)).to(args.device)
    factories = {m: method_factory(m, args) for m in args.methods}
    print(f"diffinv bench: {len(names)} images at {args.size}x{args.size}, target {args.target}, "
          f"layers {', '.join(layers)}, methods {', '.join(args.methods)}, seeds {args.seeds}")
    run_benchmark(target, images, names, layers, factories, args.out, seeds=args.seeds,
                  config={"command": "bench", "dataset": args.images or args.dataset,
                          "iterations": args.iterations, "model": args.model})
    print((Path(args.out) / "results.md").read_text())
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"diffinv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
