"""Tunes the weight of DeepInversion's BatchNorm prior per feature stride (``BN_WEIGHTS``).

The atlas's setting: the real EfficientNet-Lite0 at 128 px, layers blocks.1/2/4/6 (strides 4, 8, 16, 32),
300 iterations with the atlas's early stop (patience 40, min_delta 0.01), one seed. The images are the first
``--num-images`` of the atlas's *training* split of imagenet-sample-500 (``split_images(files, 400, seed=0)``,
as ``diffinv atlas --train-split 400``): never the 100 held-out images the atlas evaluates. Weight 0 is the
plain ``pixel`` method (the same code path without the prior). Prints a markdown table of the mean PSNR
(and SSIM) per layer and weight, with the paired difference to weight 0.

    python examples/plugin/tune_weight.py --num-images 8 --weights 0 1e-5 3e-5 1e-4 3e-4
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from diffinv.inverters import build_inverter
from diffinv.io import collect_images, load_images
from diffinv.jobs.atlas import DEFAULT_EARLY_STOP, split_images
from diffinv.metrics import psnr, ssim
from diffinv.targets import TargetNetwork


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="/work/shared/data/imagenet-sample-500")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.2", "blocks.4", "blocks.6"])
    p.add_argument("--weights", nargs="+", type=float, default=[0.0, 1e-5, 3e-5, 1e-4, 3e-4])
    p.add_argument("--iterations", type=int, default=300)
    args = p.parse_args()

    split = split_images(collect_images([args.images]), 400, seed=0)
    files = split.train[: args.num_images]
    images = load_images(files, args.size)
    target = TargetNetwork.from_name("tf_efficientnet_lite0", args.layers, input_size=(args.size, args.size))
    print(
        f"{len(files)} training-split images ({os.path.basename(files[0])} ...), {args.size} px, "
        f"torch threads {torch.get_num_threads()}, load {Path('/proc/loadavg').read_text().split()[:3]}"
    )

    rows = {}
    for layer in args.layers:
        with torch.no_grad():
            features = target.feature(images, layer)
        base = None
        for weight in args.weights:
            tic = time.perf_counter()
            inverter = build_inverter("deepinversion", target, iterations=args.iterations, bn_weight=weight)
            out = inverter(
                features,
                (args.size, args.size),
                generator=torch.Generator().manual_seed(0),
                progress=False,
                early_stop=DEFAULT_EARLY_STOP,
            )
            values = psnr(out.images, images)
            base = values if base is None else base
            diff = values - base
            rows[layer, weight] = (
                values.mean().item(),
                ssim(out.images, images).mean().item(),
                diff.mean().item(),
                diff.std().item() / max(len(diff), 1) ** 0.5 * 1.96,
                int((diff > 0).sum()),
            )
            r = rows[layer, weight]
            print(
                f"{layer} (stride {args.size // features.shape[-1]}) weight {weight:g}: PSNR {r[0]:.2f} SSIM {r[1]:.3f} "
                f"diff {r[2]:+.2f} +- {r[3]:.2f} ({r[4]}/{len(diff)} better) {time.perf_counter() - tic:.0f} s",
                flush=True,
            )

    print("\n| layer (stride) | " + " | ".join(f"{w:g}" for w in args.weights) + " |")
    print("|---|" + "---|" * len(args.weights))
    for layer in args.layers:
        stride = args.size // target.feature_shape(layer, (args.size, args.size))[-1]
        cells = [
            f"{rows[layer, w][0]:.2f}"
            + (
                ""
                if w == args.weights[0]
                else f" ({rows[layer, w][2]:+.2f} ± {rows[layer, w][3]:.2f}, {rows[layer, w][4]}/{args.num_images})"
            )
            for w in args.weights
        ]
        print(f"| {layer} ({stride}) | " + " | ".join(cells) + " |")
    print(f"\nload average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
