"""``diffinv video``: a clip -> temporally smoothed reconstructions (frames, mp4s, metrics)."""

from __future__ import annotations

from pathlib import Path

from ..features import FeatureSet
from ..io import fingerprint_path, read_video, write_side_by_side, write_video
from ..jobs.video import extract_video_features, invert_video
from ..targets import TargetNetwork
from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("video", help="a video clip -> temporally smoothed reconstructions (frames, mp4s, metrics)")
    p.add_argument("video", help="a video file FFmpeg can read (mp4, mkv, ...)")
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="layer name (run with an unknown name to list them)")
    p.add_argument("--method", default="pixel", choices=common.METHODS, help="inversion method (default pixel)")
    p.add_argument("--temporal-weight", type=common.non_negative_float, default=0.0,
                   help="λ of λ·Σ||z_t - z_(t-1)||² between consecutive frames (default 0: independent frames)")
    p.add_argument("--window", type=common.positive_int, default=4, help="frames inverted together as one batch (default 4)")
    p.add_argument("--warm-start", choices=("auto", "on", "off"), default="auto",
                   help="start each window from the previous reconstruction (auto: when λ > 0)")
    p.add_argument("--start", type=common.non_negative_int, default=0, help="first frame, 0-based (default 0)")
    p.add_argument("--frames", type=common.positive_int, default=None, help="number of frames to invert (default: to the end)")
    p.add_argument("--stride", type=common.positive_int, default=1, help="keep every STRIDE-th frame (default 1)")
    common.add_size_arg(p)
    p.add_argument("--features", default=None,
                   help="features of the selected frames (.safetensors) instead of extracting them; they are checked "
                        "against the target (network, weights, layer, size)")
    p.add_argument("--seed", type=common.non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--no-mp4", action="store_true", help="do not write reconstruction.mp4 and side_by_side.mp4")
    common.add_overwrite_arg(p)
    common.add_out_arg(p, "output folder: frames/, metrics.json, *.mp4 (resumed when it holds the same run)")
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """``diffinv video IN.mp4 --layer L --method M [--temporal-weight λ] --out DIR``."""
    # 1. Check every argument before any model is loaded, then read the clip
    device = common.resolve_device(args.device)
    common.check_out_dir(args.out)
    make_inverter = common.inverter_factory(args.method, args)
    stop = None if args.frames is None else args.start + (args.frames - 1) * args.stride + 1
    clip = read_video(args.video, start=args.start, stop=stop, stride=args.stride, size=args.size)
    if args.frames is not None and len(clip) < args.frames:
        raise common.UsageError(f"`--frames {args.frames}` asked for more frames than the clip holds from "
                         f"--start {args.start}: got {len(clip)}.")

    # 2. Target and features
    size = tuple(clip.frames.shape[-2:])
    target = TargetNetwork.from_name(args.target, args.layer, weights=args.weights, input_size=size)
    target = target.to(device)
    if args.features:
        features = FeatureSet.load(args.features)
        if len(features) != len(clip):
            raise common.UsageError(
                f"`--features` {args.features!r} holds {len(features)} feature maps but the selected frames are "
                f"{len(clip)} (frames {clip.indices[0]}..{clip.indices[-1]}, stride {args.stride}); "
                f"they must match one to one."
            )
        if features.layer != args.layer:
            raise common.UsageError(f"`--features` {args.features!r} come from layer {features.layer!r}, not `--layer` "
                             f"{args.layer!r}.")
        if tuple(features.input_size) != size:
            raise common.UsageError(f"`--features` {args.features!r} were extracted at {features.input_size}, but the "
                             f"frames are read at {size} (`--size {args.size}`); pass the size they were "
                             f"extracted at.")
        features.check(target)  # the network and weights that made them (provenance), and their shape
    else:
        features = extract_video_features(target, clip, args.layer)

    # 3. The inverter, with temporal smoothing
    inverter = make_inverter(target)
    if hasattr(inverter, "temporal_weight"):
        inverter.temporal_weight = args.temporal_weight
    elif args.temporal_weight > 0:
        raise common.UsageError(f"`--method` {args.method!r} has no `temporal_weight`: it cannot smooth over time with "
                         f"`--temporal-weight {args.temporal_weight}`; use --temporal-weight 0 (independent frames) "
                         f"or an optimizing method (pixel, dip).")
    warm = {"auto": None, "on": True, "off": False}[args.warm_start]

    # 4. Invert, window by window, into the run store (frames and records written as they finish)
    out_dir = Path(args.out)
    settings = {"source": str(Path(args.video).resolve()), "stride": args.stride,
                "features": fingerprint_path(args.features) if args.features else "extracted"}
    print(f"diffinv video: {len(clip)} frames ({clip.indices[0]}..{clip.indices[-1]}, stride {args.stride}) of "
          f"{args.video} at {size[0]}x{size[1]}, {args.target}.{args.layer}, method {args.method}, "
          f"temporal weight {args.temporal_weight}, window {args.window}")
    out = invert_video(inverter, features, window=args.window, references=clip.frames, frame_ids=clip.indices,
                       warm_start=warm, out_dir=out_dir, overwrite=args.overwrite, seed=args.seed, settings=settings)

    # 5. Videos
    if not args.no_mp4:
        write_video(out.images, out_dir / "reconstruction.mp4", clip.fps)
        write_side_by_side(clip.frames, out.images, out_dir / "side_by_side.mp4", clip.fps)
    s = out.summary
    print(f"PSNR {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} dB, SSIM {s['ssim_mean']:.3f}, "
          f"feature residual {s['feature_residual_mean']:.3f}")
    if "temporal_consistency" in s:
        print(f"temporal consistency (mean |x_t - x_t-1|): reconstruction {s['temporal_consistency']:.4f}, "
              f"source {s['source_temporal_consistency']:.4f} (ratio {s['temporal_ratio']:.2f}), "
              f"flicker {s['flicker']:.4f}")
    written = "frames/, metrics.json" + ("" if args.no_mp4 else ", reconstruction.mp4, side_by_side.mp4")
    print(f"wrote {out_dir}/{{{written}}} ({len(out.computed)} frames computed now, "
          f"{len(clip) - len(out.computed)} resumed)")
    return 0
