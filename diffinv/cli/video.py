"""``diffinv video``: clips -> temporally smoothed reconstructions (frames, mp4s, metrics).

One clip writes its run into ``--out``; several clips write one run folder per clip,
``--out/<name>/`` (names from :func:`~diffinv.jobs.store.unique_names`), and ``--out/summary.json``.
Under ``torchrun``/``accelerate launch`` with several processes each clip is claimed by one process
(:func:`~diffinv.jobs.items.claimed`), or the windows of one clip of independent windows are shared.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..features import FeatureSet
from ..inverters import INVERTERS
from ..io import fingerprint_path, read_video, write_side_by_side, write_video
from ..jobs.claims import claimed
from ..jobs.distributed import launch_state
from ..jobs.store import MANIFEST, unique_names
from ..jobs.video import METRICS_FILE, SUMMARY_FILE, extract_video_features, invert_video, write_clips_summary
from ..targets import TargetNetwork
from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("video", help="video clips -> temporally smoothed reconstructions (frames, mp4s, metrics)")
    p.add_argument(
        "video",
        nargs="+",
        help="video files FFmpeg can read (mp4, mkv, ...); several clips are split across the processes "
        "of a torchrun/accelerate launch",
    )
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="layer name (run with an unknown name to list them)")
    p.add_argument("--method", default="pixel", choices=common.METHODS, help="inversion method (default pixel)")
    p.add_argument(
        "--temporal-weight",
        type=common.non_negative_float,
        default=0.0,
        help="λ of λ·Σ||z_t - z_(t-1)||² between consecutive frames (default 0: independent frames)",
    )
    p.add_argument(
        "--window", type=common.positive_int, default=4, help="frames inverted together as one batch (default 4)"
    )
    p.add_argument(
        "--warm-start",
        choices=("auto", "on", "off"),
        default="auto",
        help="start each window from the previous reconstruction (auto: when λ > 0)",
    )
    p.add_argument("--start", type=common.non_negative_int, default=0, help="first frame, 0-based (default 0)")
    p.add_argument(
        "--frames", type=common.positive_int, default=None, help="number of frames to invert (default: to the end)"
    )
    p.add_argument("--stride", type=common.positive_int, default=1, help="keep every STRIDE-th frame (default 1)")
    common.add_size_arg(p, scored=True)
    p.add_argument(
        "--features",
        default=None,
        help="features of the selected frames (.safetensors) instead of extracting them; they are checked "
        "against the target (network, weights, layer, size)",
    )
    p.add_argument("--seed", type=common.seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--no-mp4", action="store_true", help="do not write reconstruction.mp4 and side_by_side.mp4")
    common.add_overwrite_arg(p)
    common.add_out_arg(
        p,
        "output folder: frames/, metrics.json, *.mp4 (resumed when it holds the same run); with "
        "several clips one such folder per clip in it, and summary.json",
    )
    common.add_method_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """``diffinv video IN.mp4 [IN2.mp4 ...] --layer L --method M [--temporal-weight λ] --out DIR``."""
    # 1. Check every argument and every clip before any model is loaded or anything is written
    device = common.resolve_device(args.device)
    out_dir = common.check_out_dir(args.out)
    clips = [str(c) for c in args.video]
    several = len(clips) > 1
    if several and args.features:
        raise common.UsageError(
            f"`--features` holds the features of one clip, but {len(clips)} clips were given; "
            f"pass one clip with --features, or leave --features out to extract them."
        )
    if several and (out_dir / MANIFEST).is_file():
        raise common.UsageError(
            f"`--out` {args.out!r} holds a one-clip run; several clips write one folder per clip "
            f"and summary.json there. Choose another output folder."
        )
    if not several and (out_dir / SUMMARY_FILE).is_file():
        raise common.UsageError(
            f"`--out` {args.out!r} holds a run of several clips ({SUMMARY_FILE}); a one-clip run "
            f"writes frames/ and metrics.json there. Choose another output folder."
        )
    state, device = launch_state(device)  # under torchrun/accelerate launch: its own GPU per process
    if state is not None:
        args.device = str(device)  # for inverters that load models themselves
    temporal = INVERTERS[args.method].config_class.is_temporal()
    if args.temporal_weight > 0 and not temporal:
        raise common.UsageError(
            f"`--method` {args.method!r} has no `temporal_weight`: it cannot smooth over time with "
            f"`--temporal-weight {args.temporal_weight}`; use --temporal-weight 0 (independent "
            f"frames) or an optimizing method (pixel, dip)."
        )
    make_inverter = common.inverter_factory(
        args.method, args, **({"temporal_weight": args.temporal_weight} if temporal else {})
    )
    common.check_memory_fits(
        args, args.layer, [args.method], images=max(args.frames or 0, args.window), batch_size=args.window
    )
    if several or state is not None:
        for clip in clips:  # every process checks every clip, so that all of them stop on a bad one
            _read_clip(clip, args, size=8)

    # 2. Each process inverts its share of the clips (all of them without a multi-process launch)
    names = unique_names(clips) if several else ["."]
    jobs = list(zip(clips, names))
    # One clip of independent windows (λ = 0, no warm start): its windows are split instead.
    split = state is not None and not several and args.temporal_weight == 0 and args.warm_start != "on"
    targets: dict = {}
    if split or (state is None and not several):
        if split:
            i, n = state.process_index, state.num_processes
            print(
                f"diffinv video: process {i} of {n} shares the windows of {clips[0]} with the others, each window "
                f"claimed by one process (independent windows: --temporal-weight 0)"
            )
        for clip, name in jobs:
            _invert_clip(
                clip,
                out_dir / name if several else out_dir,
                args,
                device,
                make_inverter,
                targets,
                state=state if split else None,
            )
    else:  # each clip claimed by one process (of a launch, or of independent commands) and inverted there alone
        claims = claimed(
            out_dir,
            jobs,
            state=state,
            prefix="clip-",
            finished=lambda job: _clip_finished(out_dir / job[1] if several else out_dir),
        )
        for taken, (clip, name) in enumerate(claims, 1):
            if state is not None:
                print(
                    f"diffinv video: process {state.process_index} of {state.num_processes} inverts {clip} "
                    f"({taken} of {len(clips)} clips)"
                )
            _invert_clip(clip, out_dir / name if several else out_dir, args, device, make_inverter, targets)

    # 3. The table of all clips, by the main process once every process is done
    if state is not None:
        state.wait_for_everyone()
    if several and (state is None or state.is_main_process):
        summary = write_clips_summary(out_dir, jobs)
        for row in summary["clips"]:
            psnr = f"PSNR {row['psnr_mean']:.2f} dB" if "psnr_mean" in row else "no frames"
            print(f"  {row['folder']}/: {row['clip']}, {row.get('frames_done', 0)} frames, {psnr}")
        print(
            f"wrote {out_dir}/{SUMMARY_FILE} ({len(clips)} clips, {summary['frames_done']} frames"
            + (f", PSNR {summary['psnr_mean']:.2f} dB" if "psnr_mean" in summary else "")
            + ")"
        )
    return 0


def _clip_finished(folder: Path) -> bool:
    """Whether a clip's run folder holds every frame (its ``metrics.json`` says so)."""
    try:
        summary = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))["summary"]
        return summary["frames_done"] == summary["frames"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read_clip(video: str, args, size=None):
    """The selected frames of one clip (``--start/--frames/--stride``), at ``size`` (default ``--size``)."""
    stop = None if args.frames is None else args.start + (args.frames - 1) * args.stride + 1
    size = args.size if size is None else size
    clip = read_video(video, start=args.start, stop=stop, stride=args.stride, size=size)
    if args.frames is not None and len(clip) < args.frames:
        raise common.UsageError(
            f"`--frames {args.frames}` asked for more frames than the clip {video!r} holds from "
            f"--start {args.start}: got {len(clip)}."
        )
    return clip


def _invert_clip(video: str, out_dir: Path, args, device, make_inverter, targets: dict, state=None) -> None:
    """One clip into its run folder ``out_dir``: frames/, metrics.json and the mp4s.

    With ``state`` (a multi-process launch), the clip's windows are split across the processes and the
    main process writes the mp4s and reports.
    """
    clip = _read_clip(video, args)
    main = state is None or state.is_main_process

    # 1. Target (one per frame size) and features
    size = tuple(clip.frames.shape[-2:])
    if size not in targets:
        target = TargetNetwork.from_name(args.target, args.layer, weights=args.weights, input_size=size)
        targets[size] = target.to(device)
    target = targets[size]
    if args.features:
        features = FeatureSet.load(args.features)
        if len(features) != len(clip):
            raise common.UsageError(
                f"`--features` {args.features!r} holds {len(features)} feature maps but the selected frames are "
                f"{len(clip)} (frames {clip.indices[0]}..{clip.indices[-1]}, stride {args.stride}); "
                f"they must match one to one."
            )
        if features.layer != args.layer:
            raise common.UsageError(
                f"`--features` {args.features!r} come from layer {features.layer!r}, not `--layer` {args.layer!r}."
            )
        if tuple(features.input_size) != size:
            raise common.UsageError(
                f"`--features` {args.features!r} were extracted at {features.input_size}, but the "
                f"frames are read at {size} (`--size {args.size}`); pass the size they were "
                f"extracted at."
            )
        features.check(target)  # the network and weights that made them (provenance), and their shape
    else:
        features = extract_video_features(target, clip, args.layer)

    # 2. The inverter, with temporal smoothing (its config's temporal_weight)
    inverter = make_inverter(target)
    warm = {"auto": None, "on": True, "off": False}[args.warm_start]

    # 3. Invert, window by window, into the run store (frames and records written as they finish)
    settings = {
        "source": str(Path(video).resolve()),
        "stride": args.stride,
        "features": fingerprint_path(args.features) if args.features else "extracted",
    }
    if main:
        print(
            f"diffinv video: {len(clip)} frames ({clip.indices[0]}..{clip.indices[-1]}, stride {args.stride}) of "
            f"{video} at {size[0]}x{size[1]}, {args.target}.{args.layer}, method {args.method}, "
            f"temporal weight {args.temporal_weight}, window {args.window}"
        )
    out = invert_video(
        inverter,
        features,
        window=args.window,
        references=clip.frames,
        frame_ids=clip.indices,
        warm_start=warm,
        out_dir=out_dir,
        overwrite=args.overwrite,
        seed=args.seed,
        settings=settings,
        state=state,
    )
    if not main:
        return

    # 4. Videos
    if not args.no_mp4:
        write_video(out.images, out_dir / "reconstruction.mp4", clip.fps)
        write_side_by_side(clip.frames, out.images, out_dir / "side_by_side.mp4", clip.fps)
    s = out.summary
    print(
        f"PSNR {s['psnr_mean']:.2f} ± {s['psnr_std']:.2f} dB, SSIM {s['ssim_mean']:.3f}, "
        f"feature residual {s['feature_residual_mean']:.3f}"
    )
    if "temporal_consistency" in s:
        print(
            f"temporal consistency (mean |x_t - x_t-1|): reconstruction {s['temporal_consistency']:.4f}, "
            f"source {s['source_temporal_consistency']:.4f} (ratio {s['temporal_ratio']:.2f}), "
            f"flicker {s['flicker']:.4f}"
        )
    written = "frames/, metrics.json" + ("" if args.no_mp4 else ", reconstruction.mp4, side_by_side.mp4")
    print(
        f"wrote {out_dir}/{{{written}}} ({len(out.computed)} frames computed now, "
        f"{len(clip) - len(out.computed)} resumed)"
    )
