"""Wall time of ``diffinv demo`` with its defaults, where it goes, and the quality it keeps.

Runs the demo in a fresh process (as a new user would), then reads its ``results.json`` and
prints: the whole command's wall time, the start-up (Python imports of the command line), the
optimization time of each method (summed over layers), the rest (model loading, metrics,
writing images and tables), and the PSNR per layer and method with the demo's quality bar
(DIP >= 20 dB at the earliest layer, DIP above pixel at every layer).

    python examples/benchmark_demo.py                       # this checkout
    python examples/benchmark_demo.py --repo ../old-checkout  # another checkout, for before/after
    python examples/benchmark_demo.py -- --compile          # extra arguments for `diffinv demo`

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose diffinv runs (default: this one)")
    p.add_argument("--out", default=None, help="the demo's output folder (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("demo_args", nargs="*", help="extra arguments for `diffinv demo` (after `--`)")
    args = p.parse_args(argv)
    python = [sys.executable, "-c", BOOTSTRAP, str(Path(args.repo).resolve())]
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    subprocess.run(python, check=True, cwd=args.repo)
    imports = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "demo_out")
        command = [*python, "demo", "--out", str(out), "--overwrite", *args.demo_args]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=args.repo, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}")
        records = json.loads((out / "results.json").read_text())["records"]

    seconds, psnr = defaultdict(float), defaultdict(list)
    for r in records:
        seconds[r["method"]] += r["seconds"]
        psnr[r["method"], r["layer"]].append(r["psnr"])
    layers = list(dict.fromkeys(r["layer"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    mean = {k: sum(v) / len(v) for k, v in psnr.items()}
    rest = wall - imports - sum(seconds.values())
    figures = {"wall_s": wall, "imports_s": imports, "optimization_s": dict(seconds), "rest_s": rest,
               "psnr": {f"{m} {layer}": mean[m, layer] for m in methods for layer in layers},
               "load_average": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count(), "repo": args.repo,
               "demo_args": args.demo_args}

    print(f"diffinv demo {' '.join(args.demo_args)} ({args.repo}): {wall:.1f} s wall "
          f"(load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs visible)")
    print(f"  start-up (imports)         {imports:6.1f} s")
    for m in methods:
        print(f"  {m + ' optimization':<26} {seconds[m]:6.1f} s")
    print(f"  rest (loading, metrics, I/O) {rest:4.1f} s")
    print("\n| method | " + " | ".join(layers) + " |\n|---|" + "---|" * len(layers))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{mean[m, layer]:.2f}" for layer in layers) + " |")
    if {"dip", "pixel"} <= set(methods):
        first = mean["dip", layers[0]] >= 20.0
        above = all(mean["dip", layer] > mean["pixel", layer] for layer in layers)
        print(f"\nquality bar: DIP >= 20 dB at {layers[0]}: {'yes' if first else 'NO'}; "
              f"DIP above pixel at every layer: {'yes' if above else 'NO'}")
        figures["quality_bar"] = first and above
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
