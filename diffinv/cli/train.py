"""``diffinv train-decoder`` / ``diffinv train-mapper``: (image, feature) pairs -> a black-box inverter.

Both run data-parallel under ``accelerate launch`` / ``torchrun``: ``--batch-size`` is the global
batch, ``--lr`` its learning rate, the logged loss the mean over the global batch, written by the
main process (see :mod:`diffinv.jobs.training`).
"""

from __future__ import annotations

import argparse

from ..jobs.training import TrainConfig, TrainResult, train
from . import common


def _decoder_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument(
        "--min-channels", type=common.positive_int, default=d.min_channels, help="width of the full-resolution stages"
    )


def _mapper_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="Stable Diffusion model whose VAE defines the latents (diffusers folder; 'tiny' = random)",
    )
    p.add_argument(
        "--pixel-weight",
        type=common.non_negative_float,
        default=d.pixel_weight,
        help=f"weight of the pixel loss after decoding (default {d.pixel_weight:g})",
    )


# The commands: ``diffinv train-KIND``, each kind of model with its help and the options only it has.
COMMANDS = {
    "mapper": ("(image, feature) pairs -> a features-to-latent mapper (black-box)", _mapper_arguments),
    "decoder": ("(image, feature) pairs -> an UpconvNet decoder (black-box baseline)", _decoder_arguments),
}


def add_parsers(sub) -> None:
    for kind, (help, own_arguments) in COMMANDS.items():
        p = sub.add_parser(f"train-{kind}", help=help)
        add_train_arguments(p, own_arguments)
        p.set_defaults(func=lambda args, kind=kind: _train(args, kind))


def add_train_arguments(p: argparse.ArgumentParser, own_arguments) -> None:
    """Options of ``diffinv train-KIND``; ``own_arguments(p, defaults)`` adds those of that kind only."""
    d = TrainConfig(out="", layer="")
    common.add_target_args(p)
    p.add_argument("--layer", required=True, help="the target layer whose features are inverted")
    common.add_images_arg(p, "training image files and/or folders", default=[])
    p.add_argument("--video", nargs="+", default=[], dest="videos", help="training video files (all frames)")
    p.add_argument("--val-images", nargs="+", default=[], help="held-out image files/folders for validation")
    p.add_argument("--val-video", nargs="+", default=[], dest="val_videos", help="held-out clips for validation")
    p.add_argument("--val-samples", nargs="+", default=[], help="held-out skimage.data photos, e.g. chelsea coffee")
    p.add_argument(
        "--val-fraction",
        type=common.unit_float,
        default=d.val_fraction,
        help="without --val-*: hold out this tail fraction of every source (default 0.1)",
    )
    p.add_argument(
        "--max-frames", type=common.positive_int, default=None, help="at most this many frames per training video"
    )
    p.add_argument(
        "--stride", type=common.positive_int, default=d.stride, help="keep every STRIDE-th frame of training videos"
    )
    common.add_size_arg(p, scored=True)
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=d.batch_size,
        help=f"global batch: crops per optimizer step, summed over the processes of an `accelerate launch`/"
        f"`torchrun` run (divisible by their number; each process trains on its equal slice of the "
        f"same crops, so the run does not depend on the process count) (default {d.batch_size})",
    )
    p.add_argument(
        "--max-steps", type=common.positive_int, default=d.max_steps, help=f"training steps (default {d.max_steps})"
    )
    p.add_argument(
        "--lr",
        type=common.positive_float,
        default=d.learning_rate,
        dest="learning_rate",
        help=f"peak learning rate of AdamW for one step of the global batch, used as given (not scaled "
        f"with the number of processes; cosine schedule with warmup) (default {d.learning_rate:g})",
    )
    p.add_argument("--hidden-channels", type=common.positive_int, default=d.hidden_channels)
    p.add_argument(
        "--feature-weight",
        type=common.non_negative_float,
        default=d.feature_weight,
        help=f"weight of the feature loss (default {d.feature_weight:g})",
    )
    own_arguments(p, d)
    p.add_argument("--checkpoint-every", type=common.positive_int, default=d.checkpoint_every)
    p.add_argument("--keep-checkpoints", type=common.positive_int, default=d.keep_checkpoints)
    p.add_argument("--val-every", type=common.positive_int, default=d.val_every)
    common.add_mixed_precision_arg(p)
    common.add_device_arg(p)
    p.add_argument("--seed", type=common.seed_int, default=d.seed, help=f"random seed (default {d.seed})")
    common.add_overwrite_arg(p)
    common.add_out_arg(
        p, "output folder: trained model, log, loss curve, checkpoints (resumed when it holds the same run)"
    )


def _config_from_args(args: argparse.Namespace, kind: str) -> TrainConfig:
    common.check_out_dir(args.out)
    if not (args.images or args.videos):
        raise common.UsageError("no training data: give `--images` (files and/or folders) and/or `--video` clips.")
    names = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in names}
    values["device"] = str(common.resolve_device(args.device))
    values["kind"] = kind
    return TrainConfig(**values)


def _print_result(result: TrainResult) -> None:
    if not result.main_process:  # under `accelerate launch`/`torchrun`: one summary, from the main process
        return
    val = "" if result.val_psnr is None else f", validation PSNR {result.val_psnr:.2f} dB SSIM {result.val_ssim:.3f}"
    start = result.log["resumed_from"]
    done = "already trained" if start == result.step else "trained"
    resumed = f"resumed from step {start}, " if start and start < result.step else ""
    print(
        f"{done} to step {result.step} ({resumed}{result.images_per_second:.1f} images/s{val}); "
        f"wrote {result.out} (manifest.json, model, training_log.json, loss_curve.png, checkpoints/)"
    )


def _train(args: argparse.Namespace, kind: str) -> int:
    _print_result(train(_config_from_args(args, kind)))
    return 0
