"""diffinv's pixel inversion side by side with torch-lucent's on the same photos, weights and normalization.

Every method inverts the features of the same images through the same network (the real
EfficientNet-Lite0 by default, as :class:`diffinv.TargetNetwork` loads it, normalization
included); the reconstructions are saved as 8-bit PNGs and scored from those files with
scikit-image (PSNR; SSIM with a gaussian window), as in the project's benchmark protocol.
One table: PSNR / SSIM per layer and seconds per image for each method.

Methods (``--methods``):

* ``lucent``: torch-lucent 0.1.8's plain inversion — ``render_vis`` with no transforms, Adam
  0.05, a feature-MSE objective, ``param.image`` (Fourier + colour-decorrelated), the final
  iterate; ``preprocess=False`` with the target's own normalization as the only transform and
  ``fixed_image_size`` (else lucent normalizes for ImageNet and upsamples to 224).
* ``pixel``: diffinv's ``PixelInverter`` with its defaults (the Fourier parameterization).
* ``pixel-sigmoid``: the same with ``parameterization="sigmoid"`` (sigmoid pixels, TV, jitter).
* ``dip``: ``DIPInverter`` with its defaults.
* ``dip+pixel``: the registered hybrid ``build_inverter("dip+pixel", target)``: DIP, then a
  Fourier pixel refinement started from its images (``--iterations`` each, the refinement at
  ``REFINE_LEARNING_RATE`` or ``--refine-lr``); the time is the sum of both. After ``dip`` in the
  same ``--out``, it refines that run's PNGs (``PixelInverter(start=files)``) instead of running
  DIP again.

torch-lucent is a peer, never a diffinv dependency: install it in a separate virtual
environment that sees the project's packages (torch, timm, the Lite0 weights) and give its
Python with ``--lucent-python``; the lucent part runs there, in a child process, and writes its
PNGs next to the others. Without ``--lucent-python`` the ``lucent`` method is skipped.

    python3 -m venv /work/venvs/lucent
    python -c "import site; print(site.getsitepackages()[0])" \\
        > /work/venvs/lucent/lib/python3.11/site-packages/zz_base.pth   # the project venv's packages
    /work/venvs/lucent/bin/pip install --no-deps torch-lucent==0.1.8 decorator kornia kornia_rs
    /work/venvs/lucent/bin/pip install ipython                          # lucent imports IPython.display

    # the 4 demo photos (skimage chelsea, coffee, astronaut, rocket), 128 px, 300 iterations
    python examples/benchmark_lucent.py --lucent-python /work/venvs/lucent/bin/python
    # real ImageNet photos
    python examples/benchmark_lucent.py --lucent-python /work/venvs/lucent/bin/python \\
        --images ../shared/data/imagenet-sample-500 --num-images 8 --layers blocks.1 blocks.2 \\
        --methods lucent pixel dip dip+pixel

Timing figures need idle cores: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lucent", "pixel", "pixel-sigmoid", "dip", "dip+pixel")


def lucent_worker(spec: dict) -> None:
    """Runs in torch-lucent's venv: inverts every layer with lucent's plain ``render_vis``, saves PNGs."""
    sys.path.insert(0, str(ROOT))  # only diffinv.targets / diffinv.io (torch, timm), never lucent in diffinv's venv
    from lucent.optvis import param, render

    from diffinv.io import save_image
    from diffinv.targets import TargetNetwork

    torch.set_num_threads(spec["threads"])
    images = torch.from_numpy(np.load(spec["images"], allow_pickle=False))
    n, _, size, _ = images.shape
    target = TargetNetwork.from_name(spec["target"], spec["layers"], input_size=(size, size))
    for layer in spec["layers"]:
        with torch.no_grad():
            features = target.feature(images, layer)
        hooked = layer.replace(".", "_")  # lucent names modules by their path joined with "_"

        def objective(hook, features=features, hooked=hooked):
            return (hook(hooked) - features).pow(2).mean()

        torch.manual_seed(spec["seed"])
        start = time.perf_counter()
        (result,) = render.render_vis(
            target.model,
            objective,
            lambda: param.image(size, batch=n),
            transforms=[target.preprocess],
            optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
            thresholds=(spec["iterations"],),
            preprocess=False,
            fixed_image_size=size,
            progress=False,
            show_image=False,
        )
        seconds = (time.perf_counter() - start) / n
        for i, array in enumerate(result):
            save_image(torch.from_numpy(array).permute(2, 0, 1), Path(spec["out"]) / "lucent" / layer / f"{i:03d}.png")
        Path(spec["out"], "lucent", layer, "seconds.json").write_text(json.dumps(seconds))


def run_lucent(args, layers: list[str], images: torch.Tensor, out: Path) -> None:
    """Runs :func:`lucent_worker` under ``--lucent-python`` on ``layers``."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", images.numpy())
        spec = {
            "images": str(Path(tmp) / "images.npy"),
            "target": args.target,
            "layers": layers,
            "iterations": args.iterations,
            "seed": args.seed,
            "threads": args.threads,
            "out": str(out),
        }
        subprocess.run([args.lucent_python, __file__, "--lucent-worker", json.dumps(spec)], check=True)


def run_diffinv(method: str, args, layers: list[str], target, images: torch.Tensor, out: Path) -> None:
    """Runs a diffinv method on ``layers``; saves the PNGs and the seconds per image of each layer."""
    from diffinv.features import FeatureSet
    from diffinv.inverters import DIPInverter, PixelInverter, build_inverter
    from diffinv.inverters.pixel import REFINE_LEARNING_RATE
    from diffinv.io import save_image

    for layer in layers:
        features = FeatureSet.extract(target, images, layer)
        generator = torch.Generator().manual_seed(args.seed)
        if method in ("pixel", "pixel-sigmoid"):
            parameterization = "sigmoid" if method == "pixel-sigmoid" else "fourier"
            result = PixelInverter(target, iterations=args.iterations, parameterization=parameterization)(
                features, generator=generator, progress=False
            )
            recon, seconds = result.images, result.seconds
        elif method == "dip+pixel":
            dip_run, lr = out / "dip" / layer, REFINE_LEARNING_RATE if args.refine_lr is None else args.refine_lr
            if (dip_run / "seconds.json").exists():  # refine --out's dip run: its PNGs are the start
                inverter = PixelInverter(
                    target,
                    iterations=args.iterations,
                    learning_rate=lr,
                    start=[dip_run / f"{i:03d}.png" for i in range(len(images))],
                )
                dip_seconds = json.loads((dip_run / "seconds.json").read_text()) * len(images)
            else:
                inverter, dip_seconds = (
                    build_inverter("dip+pixel", target, iterations=args.iterations, learning_rate=lr),
                    0.0,
                )
            result = inverter(features, generator=generator, progress=False)
            recon, seconds = result.images, dip_seconds + result.seconds
        else:
            result = DIPInverter(target, iterations=args.iterations)(features, generator=generator, progress=False)
            recon, seconds = result.images, result.seconds
        for i, image in enumerate(recon):
            save_image(image, out / method / layer / f"{i:03d}.png")
        (out / method / layer / "seconds.json").write_text(json.dumps(seconds / len(images)))


def score(out: Path, method: str, layer: str, originals: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """PSNR and SSIM of each saved PNG against the saved original."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnrs, ssims = [], []
    for i, original in enumerate(originals):
        recon = np.asarray(Image.open(out / method / layer / f"{i:03d}.png").convert("RGB"))
        psnrs.append(peak_signal_noise_ratio(original, recon, data_range=255))
        ssims.append(
            structural_similarity(
                original,
                recon,
                channel_axis=2,
                data_range=255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )
    return psnrs, ssims


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lucent-python", default=None, help="the Python of a venv with torch-lucent 0.1.8 (see above)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["lucent", "pixel", "pixel-sigmoid", "dip"])
    p.add_argument("--layers", nargs="+", default=["blocks.1", "blocks.2", "blocks.4", "blocks.6"])
    p.add_argument("--images", default=None, help="a folder of photos (default: the 4 demo photos of skimage)")
    p.add_argument("--num-images", type=int, default=None, help="the first N photos of --images (default all)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument(
        "--refine-lr",
        type=float,
        default=None,
        help="dip+pixel: the pixel refinement's learning rate (default: diffinv's REFINE_LEARNING_RATE)",
    )
    p.add_argument("--target", default="tf_efficientnet_lite0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="benchmark_lucent_out", help="where the PNGs and results.json go")
    p.add_argument("--per-image", action="store_true", help="also print every image's PSNR")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take a method's PNGs and times at a layer from --out where an earlier run left them (methods "
        "and layers can run in separate processes, then one --reuse run prints the table)",
    )
    p.add_argument("--lucent-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.lucent_worker is not None:
        return lucent_worker(json.loads(args.lucent_worker))

    from diffinv.io import list_images, load_images, sample_images, save_image
    from diffinv.targets import TargetNetwork

    torch.set_num_threads(args.threads)
    if args.images:
        files = list_images(args.images)[: args.num_images]
        images, names = load_images(files, size=args.size), [f.name for f in files]
    else:
        images, names = sample_images(size=args.size), ["chelsea", "coffee", "astronaut", "rocket"]
        images, names = images[: args.num_images], names[: args.num_images]
    out = Path(args.out)
    for i, image in enumerate(images):
        save_image(image, out / "original" / f"{i:03d}.png")
    from PIL import Image

    originals = [np.array(Image.open(out / "original" / f"{i:03d}.png").convert("RGB")) for i in range(len(images))]
    images = torch.stack([torch.from_numpy(o).permute(2, 0, 1).float() / 255 for o in originals])  # what was saved
    methods = [m for m in args.methods if m != "lucent" or args.lucent_python]
    if "lucent" in args.methods and not args.lucent_python:
        print("lucent skipped: give --lucent-python (a venv with torch-lucent 0.1.8; see this script's docstring)")

    target = TargetNetwork.from_name(args.target, args.layers, input_size=(args.size, args.size))
    load_before, seconds = os.getloadavg(), {}
    for method in methods:
        todo = [
            layer for layer in args.layers if not (args.reuse and (out / method / layer / "seconds.json").exists())
        ]
        start = time.perf_counter()
        if todo and method == "lucent":
            run_lucent(args, todo, images, out)
        elif todo:
            run_diffinv(method, args, todo, target, images, out)
        seconds[method] = {
            layer: json.loads((out / method / layer / "seconds.json").read_text()) for layer in args.layers
        }
        print(f"{method}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    results = {
        m: {
            layer: dict(zip(("psnr", "ssim"), score(out, m, layer, originals)), seconds=seconds[m][layer])
            for layer in args.layers
        }
        for m in methods
    }
    print(
        f"\n{len(images)} images ({args.images or 'skimage demo photos'}), {args.size} px, {args.iterations} "
        f"iterations, {args.target}, seed {args.seed}, {args.threads} threads; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print("| method | " + " | ".join(f"{layer} PSNR / SSIM" for layer in args.layers) + " | s/image |")
    print("|---|" + "---|" * (len(args.layers) + 1))
    for m in methods:
        cells = [
            f"{np.mean(results[m][layer]['psnr']):.2f} / {np.mean(results[m][layer]['ssim']):.3f}"
            for layer in args.layers
        ]
        per_image = np.mean([results[m][layer]["seconds"] for layer in args.layers])
        print(f"| {m} | " + " | ".join(cells) + f" | {per_image:.1f} |")
    if args.per_image:
        print("\nPSNR per image\n\n| method | layer | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for m in methods:
            for layer in args.layers:
                print(f"| {m} | {layer} | " + " | ".join(f"{v:.2f}" for v in results[m][layer]["psnr"]) + " |")
    (out / "results.json").write_text(json.dumps({"names": names, "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
