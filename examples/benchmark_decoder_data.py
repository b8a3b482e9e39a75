"""How much the black-box decoder gains from more training images: the audit's 13 photos vs an atlas's split.

Reads a finished ``diffinv atlas`` folder: its evaluation images, its decoders (trained on the
atlas's training split) and their training settings. Trains decoders with the *same* settings
on the audit's default training photos instead (foolbox's ImageNet samples the audit does not
attack, and matplotlib's grace_hopper.jpg: 13 photos), one per layer, into ``--out``; then inverts
the atlas's evaluation images with both and prints PSNR / SSIM with 95 % bootstrap intervals
and the paired difference, per layer.

    diffinv atlas --images ../shared/data/imagenet-sample-500 --train-split 400 \\
        --layers blocks.1 blocks.2 blocks.4 blocks.6 --labels wnid --out atlas100
    python examples/benchmark_decoder_data.py atlas100 --layers blocks.1 blocks.4 blocks.6

Training resumes (a run store per layer): run it again after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("atlas", help="a finished `diffinv atlas` folder (with --methods decoder)")
    p.add_argument("--layers", nargs="+", default=None, help="default: the atlas's layers")
    p.add_argument("--out", default="decoder_data_out", help="where the 13-photo decoders go")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)

    from diffinv.datasets import load_dataset, load_image_files, offline_training_sources
    from diffinv.inverters import DecoderInverter
    from diffinv.jobs.training import TrainConfig, train_decoder
    from diffinv.metrics import psnr, ssim
    from diffinv.stats import bootstrap_ci, format_ci, paired_difference_ci
    from diffinv.targets import TargetNetwork

    torch.set_num_threads(args.threads)
    atlas = Path(args.atlas)
    settings = json.loads((atlas / "manifest.json").read_text())["settings"]
    split = json.loads((atlas / "results.json").read_text())["split"]
    layers = args.layers or settings["layers"]
    size = settings["image_size"][0]
    identity = settings["target"]
    images, names = load_image_files(split["evaluation"], size)

    # the audit's default training photos: every offline photo but the 8 images it attacks
    attacked = set(load_dataset("foolbox-imagenet", size, limit=8)[1])
    photos = [f for f in offline_training_sources()[0] if Path(f).name not in attacked]
    template = TrainConfig(out="", layer="", **settings["decoder_training"])
    print(
        f"{len(names)} evaluation images of {atlas}; decoders on {len(photos)} photos vs "
        f"{len(split['train'])} split images, {template.max_steps} steps, batch {template.batch_size} "
        f"(load average {os.getloadavg()[0]:.1f})"
    )

    rows = []
    for layer in layers:
        tic = time.perf_counter()
        config = dataclasses.replace(
            template,
            out=str(Path(args.out) / layer),
            layer=layer,
            images=photos,
            target=identity["name"],
            size=size,
            device="cpu",
        )
        trained = train_decoder(config)
        seconds = time.perf_counter() - tic
        target = TargetNetwork.from_name(identity["name"], layer, input_size=(size, size))
        with torch.no_grad():
            features = target.feature(images, layer)
        scores = {}
        for label, folder in (("13 photos", Path(args.out) / layer), ("split", atlas / "decoders" / layer)):
            out = DecoderInverter(target, decoder=folder)(features, (size, size), progress=False)
            scores[label] = (psnr(out.images, images).tolist(), ssim(out.images, images).tolist())
        few, many = scores["13 photos"], scores["split"]
        rows.append((layer, few, many, seconds, trained.val_psnr))
        print(f"{layer}: trained in {seconds:.0f} s", flush=True)

    print("\n| layer | decoder trained on | images | PSNR (dB) | SSIM |\n|---|---|---|---|---|")
    for layer, few, many, _, _ in rows:
        print(
            f"| {layer} | {len(photos)} photos | {len(names)} | {format_ci(*bootstrap_ci(few[0]))} | "
            f"{format_ci(*bootstrap_ci(few[1]), digits=3)} |"
        )
        print(
            f"| {layer} | {len(split['train'])}-image split | {len(names)} | {format_ci(*bootstrap_ci(many[0]))} | "
            f"{format_ci(*bootstrap_ci(many[1]), digits=3)} |"
        )
    print("\n| layer | PSNR gain of the split over the photos (paired, dB) |\n|---|---|")
    for layer, few, many, _, _ in rows:
        print(f"| {layer} | {format_ci(*paired_difference_ci(many[0], few[0]))} |")
    print(
        f"\nMean [95 % bootstrap interval] over the {len(names)} evaluation images (load average "
        f"{os.getloadavg()[0]:.1f})."
    )


if __name__ == "__main__":
    main()
