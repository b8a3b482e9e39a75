"""Wall time of ``diffinv demo`` with its defaults, where it goes, and the quality it keeps.

Runs the demo in a fresh process (as a new user would), then reads its ``results.json`` and
prints: the whole command's wall time, the start-up (Python imports of the command line), the
optimization time of each method (summed over layers; with ``--workers`` the processes' times
add up to more than the wall time), the rest (model loading, metrics, writing images and
tables), and the PSNR per layer and method with the demo's quality bar (DIP >= 20 dB at the
earliest layer, DIP above pixel at every layer). Several checkouts and argument sets run one
after the other in one invocation, for before/after figures under the same conditions, with a
summary table at the end.

``--breakdown`` then times, in this process, the parts of one iteration of each method at the
demo's settings (target forward+backward per layer, DIP generator forward+backward, its input
noise, the Adam step, the loop's own bookkeeping) and scales them by the demo's iterations:
where the optimization time goes. ``--breakdown --compile`` adds the first-call (compile) and
steady-state times of the target and the generator under ``torch.compile`` (inductor).

    python examples/benchmark_demo.py                                    # this checkout
    python examples/benchmark_demo.py --repo ../old-checkout --repo .    # before/after, one run
    python examples/benchmark_demo.py --variant "--workers 1" --variant ""  # argument sets
    python examples/benchmark_demo.py --breakdown --compile --skip-demo

Timing figures need idle cores: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs diffinv from the checkout given as the first argument, as an installed copy would: the
# checkout's ``pipelines/`` and ``prompts/`` folders are the subpackages ``diffinv.pipelines`` and
# ``diffinv.prompts`` (setup.cfg's package_dir), which a plain PYTHONPATH entry would not give.
BOOTSTRAP = """
import importlib.util, runpy, sys
repo = sys.argv.pop(1)
sys.path.insert(0, repo)
import diffinv
for name in ("prompts", "pipelines"):
    spec = importlib.util.spec_from_file_location(
        "diffinv." + name, f"{repo}/{name}/__init__.py", submodule_search_locations=[f"{repo}/{name}"])
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
if len(sys.argv) > 1:
    runpy.run_module("diffinv", run_name="__main__", alter_sys=True)
else:
    import diffinv.cli
"""


def run_demo(repo: str, demo_args: list[str], out: str | None) -> dict:
    """Times ``diffinv demo`` of the checkout ``repo`` in fresh processes; returns its figures."""
    python = [sys.executable, "-c", BOOTSTRAP, str(Path(repo).resolve())]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(python, check=True, cwd=repo)
    imports = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out or Path(tmp) / "demo_out")
        command = [*python, "demo", "--out", str(folder), "--overwrite", *demo_args]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}")
        results = json.loads((folder / "results.json").read_text())

    records, processes = results["records"], results["config"].get("processes", 1)
    seconds, psnr = defaultdict(float), defaultdict(list)
    for r in records:
        seconds[r["method"]] += r["seconds"]
        psnr[r["method"], r["layer"]].append(r["psnr"])
    layers = list(dict.fromkeys(r["layer"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    mean = {k: sum(v) / len(v) for k, v in psnr.items()}
    rest = wall - imports - sum(seconds.values()) if processes == 1 else None
    figures = {
        "repo": repo,
        "demo_args": demo_args,
        "wall_s": wall,
        "imports_s": imports,
        "processes": processes,
        "threads": results["config"].get("threads"),
        "optimization_s": dict(seconds),
        "rest_s": rest,
        "psnr": {f"{m} {layer}": mean[m, layer] for m in methods for layer in layers},
        "load_average": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
    }

    print(
        f"\ndiffinv demo {' '.join(demo_args)} ({repo}): {wall:.1f} s wall "
        f"(load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs visible)"
    )
    print(f"  start-up (imports)         {imports:6.1f} s")
    if processes > 1:
        print(
            f"  work items in {processes} processes x {figures['threads']} threads; optimization time summed "
            f"over the processes:"
        )
    for m in methods:
        print(f"  {m + ' optimization':<26} {seconds[m]:6.1f} s")
    if rest is not None:
        print(f"  rest (loading, metrics, I/O) {rest:4.1f} s")
    print("\n| method | " + " | ".join(layers) + " |\n|---|" + "---|" * len(layers))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{mean[m, layer]:.2f}" for layer in layers) + " |")
    if {"dip", "pixel"} <= set(methods):
        first = mean["dip", layers[0]] >= 20.0
        above = all(mean["dip", layer] > mean["pixel", layer] for layer in layers)
        print(
            f"\nquality bar: DIP >= 20 dB at {layers[0]}: {'yes' if first else 'NO'}; "
            f"DIP above pixel at every layer: {'yes' if above else 'NO'}"
        )
        figures["quality_bar"] = first and above
    return figures


def _ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def breakdown(iterations: int = 300, compile: bool = False) -> dict:
    """Where one iteration of each demo method goes, at the demo's settings, scaled to the demo."""
    import torch

    from diffinv.compilation import compiled_feature
    from diffinv.datasets import load_dataset
    from diffinv.features import FeatureSet
    from diffinv.inverters import DIPInverter, PixelInverter
    from diffinv.inverters.dip import dip_parameterization
    from diffinv.optimization import adam
    from diffinv.targets import DEFAULT_LAYERS, TargetNetwork

    images = load_dataset("skimage", 128, limit=4)[0]
    layers = list(DEFAULT_LAYERS["tf_efficientnet_lite0"])
    target = TargetNetwork.from_name("tf_efficientnet_lite0", layers, input_size=(128, 128))
    net, render = dip_parameterization(len(images), (128, 128), generator=torch.Generator().manual_seed(0))
    params = list(net.parameters())
    optimizer = adam(params, 0.01)
    for param in params:
        param.grad = torch.zeros_like(param)
    noise_shape = (1, 128, 128, len(images) * net.in_channels)
    parts = {
        "dip generator fwd+bwd (without its noise)": _ms(lambda: render(train=False).sum().backward()),
        "dip input noise": _ms(lambda: torch.randn(noise_shape).permute(0, 3, 1, 2) / 30),
        "dip Adam step": _ms(optimizer.step),
    }
    x = images.clone().requires_grad_(True)
    rows = []
    for layer in layers:
        features = FeatureSet.extract(target, images, layer)
        target_ms = _ms(lambda layer=layer: target.feature(x, layer).sum().backward())
        per_method = {}
        for cls in (PixelInverter, DIPInverter):
            out = cls(target, iterations=40)(features, generator=torch.Generator().manual_seed(0), progress=False)
            per_method[cls.name] = 1000 * out.info["optimize_seconds"] / 40
        rows.append(
            {"layer": layer, "target_ms": target_ms, "pixel_ms": per_method["pixel"], "dip_ms": per_method["dip"]}
        )

    generator_ms = sum(parts.values())
    print(f"\nOne iteration at the demo's settings (4 images, 128x128, {torch.get_num_threads()} threads), ms:")
    for name, ms in parts.items():
        print(f"  {name:<44} {ms:7.1f}")
    print(
        "\n| layer | target fwd+bwd | pixel iteration | pixel rest | dip iteration | dip generator+noise+Adam "
        "| dip rest |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['layer']} | {r['target_ms']:.1f} | {r['pixel_ms']:.1f} | {r['pixel_ms'] - r['target_ms']:.1f} "
            f"| {r['dip_ms']:.1f} | {generator_ms:.1f} | {r['dip_ms'] - r['target_ms'] - generator_ms:.1f} |"
        )
    scale = iterations / 1000
    target_s = sum(r["target_ms"] for r in rows) * scale
    totals = {
        "pixel: target fwd+bwd": target_s,
        "pixel: the rest (sigmoid, jitter, TV, loss, Adam, loop)": sum(r["pixel_ms"] for r in rows) * scale - target_s,
        "dip: target fwd+bwd": target_s,
        **{f"dip: {name}": ms * len(rows) * scale for name, ms in parts.items()},
        "dip: the rest (loss, loop)": sum(r["dip_ms"] for r in rows) * scale
        - target_s
        - generator_ms * len(rows) * scale,
    }
    print(f"\nScaled to the demo ({len(rows)} layers x {iterations} iterations per method), seconds:")
    for name, seconds in totals.items():
        print(f"  {name:<58} {seconds:6.1f}")
    figures = {"parts_ms": parts, "layers": rows, "demo_seconds": totals}

    if compile:
        deepest = layers[-1]
        eager = _ms(lambda: target.feature(x, deepest).sum().backward())
        feature = compiled_feature(target, deepest)
        start = time.perf_counter()
        feature(x).sum().backward()
        target_first = time.perf_counter() - start
        target_steady = _ms(lambda: feature(x).sum().backward())
        _, compiled_render = dip_parameterization(
            len(images), (128, 128), compile=True, generator=torch.Generator().manual_seed(0)
        )
        eager_generator = _ms(lambda: render(train=False).sum().backward())
        start = time.perf_counter()
        compiled_render(train=False).sum().backward()
        generator_first = time.perf_counter() - start
        generator_steady = _ms(lambda: compiled_render(train=False).sum().backward())
        print("\ntorch.compile (inductor), forward+backward:")
        print(
            f"  target to {deepest}: first call {target_first:.1f} s, then {target_steady:.1f} ms (eager {eager:.1f} ms)"
        )
        print(
            f"  dip generator: first call {generator_first:.1f} s, then {generator_steady:.1f} ms "
            f"(eager {eager_generator:.1f} ms)"
        )
        figures["compile"] = {
            "target_first_s": target_first,
            "target_ms": target_steady,
            "target_eager_ms": eager,
            "generator_first_s": generator_first,
            "generator_ms": generator_steady,
            "generator_eager_ms": eager_generator,
        }
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repo", action="append", default=None, help="a checkout whose diffinv runs (repeatable; default: this one)"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help="arguments for `diffinv demo`, as one string (repeatable; each runs on every checkout)",
    )
    p.add_argument("--out", default=None, help="the demo's output folder (default: a temporary folder)")
    p.add_argument("--skip-demo", action="store_true", help="only the --breakdown")
    p.add_argument("--breakdown", action="store_true", help="also time the parts of one iteration (this checkout)")
    p.add_argument("--compile", action="store_true", help="with --breakdown: also under torch.compile")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    runs = (
        []
        if args.skip_demo
        else [
            run_demo(repo, shlex.split(variant), args.out)
            for repo in args.repo or [str(ROOT)]
            for variant in args.variant or [""]
        ]
    )
    if len(runs) > 1:
        print(
            "\n| checkout | demo arguments | wall s | imports s | processes | quality bar |\n|---|---|---|---|---|---|"
        )
        for r in runs:
            print(
                f"| {r['repo']} | {' '.join(r['demo_args']) or '(defaults)'} | {r['wall_s']:.1f} | {r['imports_s']:.1f} "
                f"| {r['processes']} | {'yes' if r.get('quality_bar') else 'NO'} |"
            )
    figures = {"runs": runs}
    if args.breakdown:
        figures["breakdown"] = breakdown(compile=args.compile)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
