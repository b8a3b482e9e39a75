"""Image-iterations per second of the white-box diffusion loop: batch x K x dtype x compile mode, in a time budget.

Each *cell* (batch B, sampler steps K, network dtype, ``compile`` mode) runs ``warmup + iterations`` optimization
iterations of :class:`DiffInvPipeline` (random-weight definition, the real EfficientNet-Lite0 architecture as the
target, activation checkpointing on) and reports:

* steady state: the median seconds per iteration after the warm-up (the time between consecutive
  ``callback_on_step_end`` calls, the device synchronised), as image-iterations per second (B / s);
* compile time apart: the warm-up iterations' time minus that many steady iterations (compiling, CUDA-graph
  recording, autotuning);
* peak CUDA memory of the cell (``torch.cuda.max_memory_allocated``; not measured on CPU);
* the fraction of the GPU's peak bf16 FLOP/s: the FLOPs of one image-iteration are counted once per K with
  :class:`torch.utils.flop_counter.FlopCounterMode` (forward, backward and the checkpoint recompute; the difference
  between a 2-iteration and a 1-iteration call, so the prompt, the probe and the final render are left out) and
  the peak comes from :data:`PEAK_BF16_TFLOPS` by device name, or ``--peak-tflops``.

The cells of one (dtype, compile mode) *group* run in one worker process (compiled graphs and CUDA-graph pools do
not leak between groups) with a share of ``--budget-s``; a worker skips a cell whose estimated time no longer fits
its share and says so, and a worker still compiling at the end of its share is stopped (its remaining cells are
reported as skipped). The goal cell (batch 8, K 4) runs first in each group, then batch 8 at K 1 and 20 (memory flat in K?), then the
others from the cheapest.
The table is printed and written, after every group, as ``OUT.json`` and ``OUT.md``.

    python examples/benchmark_gpu.py --out benchmark_gpu                         # sd15 512 px, about 8 minutes
    python examples/benchmark_gpu.py --model tiny --quick --out /tmp/bench       # CPU check, under 2 minutes

Random weights give the real cost, not real images: the numbers are for speed and memory only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_pipeline import DTYPES, build  # noqa: E402  (the examples folder is not a package)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), first match of the device name wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
MODES = ("off", "reduce-overhead", "max-autotune")
# (batch, K) first in every group: the goal (at most 0.1 s per image-iteration in bf16), then the memory in K at
# batch 8 (checkpointing should keep it flat); then the other cells from the cheapest.
PRIORITY = ((8, 4), (8, 1), (8, 20))
FULL = dict(
    batches=[1, 4, 8, 16],
    steps=[1, 4, 20],
    dtypes=["bf16", "fp16"],
    compile=list(MODES),
    iterations=3,
    warmup=2,
    budget_s=450.0,
)
QUICK = dict(
    batches=[1, 2],
    steps=[1, 2],
    dtypes=["bf16"],
    compile=["off", "reduce-overhead"],
    iterations=2,
    warmup=1,
    budget_s=100.0,
)
GRACE_S = 5.0  # a worker plans to end this long before its share ends, and is stopped at the end


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="sd15", help="pipeline definition: sd15, sd-turbo, tiny (random weights)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's native size)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: 1 4 8 16)")
    p.add_argument("--steps", type=int, nargs="+", help="sampler steps K (default: 1 4 20)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="network dtypes (default: bf16 fp16)")
    p.add_argument("--compile", nargs="+", choices=MODES, help="compile modes, 'off': eager (default: all three)")
    p.add_argument("--channels-last", action="store_true", help="UNet and VAE weights channels-last in every cell")
    p.add_argument("--iterations", type=int, help="timed iterations per cell, after the warm-up (default: 3)")
    p.add_argument("--warmup", type=int, help="warm-up iterations per cell, where compiling happens (default: 2)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run in seconds (default: 450)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: by device name)")
    p.add_argument("--layer", default="blocks.2", help="EfficientNet-Lite0 layer of the target")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default="benchmark_gpu", help="writes OUT.json and OUT.md")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small grid (batch 1 2, K 1 2, bf16, off and reduce-overhead, 2 iterations, 100 s)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one group: JSON in, lines out
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():  # what is not given explicitly
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.iterations < 1 or args.warmup < 1:
        p.error(f"`--iterations` and `--warmup` must be at least 1, got {args.iterations} and {args.warmup}.")
    args.device = args.device or ("cuda" if _cuda() else "cpu")
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """The peak bf16 TFLOP/s and where it comes from: ``override``, else :data:`PEAK_BF16_TFLOPS` by name."""
    if override is not None:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"table ({key})"
    return None, "unknown device (pass --peak-tflops)"


# ---------------------------------------------------------------------- the worker: one group of cells
def _features(pipe, batch: int, size: int):
    import torch

    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(pipe.device)
    with torch.no_grad():
        return pipe.target.feature(images)


def _call(pipe, features, size: int, steps: int, iterations: int, compile, callback=None):
    import torch

    return pipe(
        features,
        prompt="",
        height=size,
        width=size,
        num_inference_steps=steps,
        iterations=iterations,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        compile=compile,
        callback_on_step_end=callback,
    )


def count_flops(pipe, size: int, steps: int) -> float:
    """FLOPs of one image-iteration at K=``steps`` (batch 1, eager): a 2-iteration call minus a 1-iteration call."""
    from torch.utils.flop_counter import FlopCounterMode

    features = _features(pipe, 1, size)
    totals = []
    for iterations in (1, 2):
        with FlopCounterMode(display=False) as counter:
            _call(pipe, features, size, steps, iterations, False)
        totals.append(counter.get_total_flops())
    return float(totals[1] - totals[0])


def run_cell(pipe, batch: int, steps: int, size: int, warmup: int, iterations: int, compile, cuda: bool) -> dict:
    import torch

    features = _features(pipe, batch, size)
    stamps = []

    def stamp(_pipe, _step, _timestep, kwargs):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = _call(pipe, features, size, steps, warmup + iterations, compile, stamp)
    gaps = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    steady = statistics.median(gaps[warmup:])
    return {
        "s_per_iteration": steady,
        "image_iterations_per_s": batch / steady,
        "first_iteration_s": gaps[0],
        "compile_s": max(0.0, sum(gaps[:warmup]) - warmup * steady),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "skipped_steps": out.skipped_steps,
    }


def _work(batch: int, steps: int, flops: dict) -> float:
    """A cell's relative work: batch x FLOPs per image-iteration (a + b K), or batch x (K + 1) before counting."""
    return batch * (flops["a"] + flops["b"] * steps) if flops else batch * (steps + 1)


def estimate_s(batch: int, steps: int, done: list[dict], flops: dict, runs: int, compiling: bool) -> float | None:
    """Seconds a cell should take, from the cells measured in this group: a measured cell with at least as much work
    bounds it from above; else the largest measured one scaled up by work. ``None`` before any measurement."""
    if not done:
        return None
    work = _work(batch, steps, flops)
    above = [d["s_per_iteration"] for d in done if _work(d["batch"], d["K"], flops) >= work]
    per_iteration = (
        min(above) if above else max(d["s_per_iteration"] * work / _work(d["batch"], d["K"], flops) for d in done)
    )
    compile_s = max(d["compile_s"] for d in done) if compiling and batch not in {d["batch"] for d in done} else 0.0
    return runs * per_iteration + compile_s


def worker(job: dict) -> None:
    """Runs one group's cells in priority order, printing ``INFO``, ``FLOPS`` and ``CELL`` lines (JSON)."""
    import torch

    def emit(kind: str, payload: dict) -> None:
        print(f"{kind} {json.dumps(payload)}", flush=True)

    deadline, cuda = time.time() + job["budget_s"], job["device"].startswith("cuda")
    pipe, _ = build(job["model"], job["dtype"], job["layer"], job["device"], "random:0")
    if job["channels_last"]:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    size = job["size"] or pipe.unet.config.sample_size * pipe.vae_scale_factor
    emit(
        "INFO",
        {
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)",
            "size": size,
            "torch": torch.__version__,
        },
    )
    flops = {}
    if job["count_flops"]:
        one, two = count_flops(pipe, size, 1), count_flops(pipe, size, 2)
        flops = {"a": 2 * one - two, "b": two - one}  # per image-iteration: a + b K (each step is one UNet call)
        emit("FLOPS", flops)
    elif job.get("flops"):
        flops = job["flops"]
    compile = False if job["compile"] == "off" else job["compile"]
    done = []
    for batch, steps in job["cells"]:
        cell = {"batch": batch, "K": steps}
        left = deadline - time.time()
        guess = estimate_s(batch, steps, done, flops, job["warmup"] + job["iterations"], compile is not False)
        if guess is not None and guess > left:
            emit(
                "CELL",
                {
                    **cell,
                    "status": "skipped",
                    "reason": f"estimated {guess:.0f} s > {max(left, 0):.0f} s left of the group's budget",
                },
            )
            continue
        try:
            result = run_cell(pipe, batch, steps, size, job["warmup"], job["iterations"], compile, cuda)
        except torch.OutOfMemoryError as err:
            emit("CELL", {**cell, "status": "skipped", "reason": f"out of memory ({str(err)[:120]})"})
            torch.cuda.empty_cache()
            continue
        done.append({**cell, **result})
        emit("CELL", {**cell, "status": "measured", "reason": "", **result})


# ---------------------------------------------------------------------- the parent: groups, budget, table
def _cell_order(batches: list[int], steps: list[int]) -> list[tuple[int, int]]:
    cells = sorted(((b, k) for b in batches for k in steps), key=lambda c: (c[0] * (c[1] + 1), c))
    return sorted(cells, key=lambda c: PRIORITY.index(c) if c in PRIORITY else len(PRIORITY))  # stable


def run_group(job: dict, budget_s: float) -> tuple[list[dict], dict]:
    """One worker process; returns its CELL payloads and its INFO/FLOPS payloads. Stopped at the end of its budget."""
    plan = max(budget_s - GRACE_S, 1.0)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps({**job, "budget_s": plan})]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    cells, meta, stop = [], {}, time.time() + budget_s
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            if time.time() > stop:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compile workers
                proc.wait()
                meta["stopped"] = (
                    f"stopped after {budget_s:.0f} s (its share of the budget), still compiling or running"
                )
                break
            continue
        kind, _, payload = line.partition(" ")
        if kind == "CELL":
            cells.append(json.loads(payload))
        elif kind in ("INFO", "FLOPS"):
            meta[kind] = json.loads(payload)
    meta["returncode"] = proc.returncode
    return cells, meta


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    start, order = time.time(), _cell_order(args.batches, args.steps)
    groups = [(dtype, mode) for dtype in args.dtypes for mode in args.compile]
    weights = {g: (2.0 if g[0] == args.dtypes[0] else 1.0) for g in groups}  # the first dtype gets twice the time
    report = {
        "command": " ".join(["python", "examples/benchmark_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "budget_s": args.budget_s,
        "channels_last": args.channels_last,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "cells": [],
    }
    flops = None
    for i, (dtype, mode) in enumerate(groups):
        left = args.budget_s - (time.time() - start)
        share = left * weights[(dtype, mode)] / sum(weights[g] for g in groups[i:])
        job = dict(
            model=args.model,
            dtype=dtype,
            compile=mode,
            channels_last=args.channels_last,
            size=args.size,
            layer=args.layer,
            device=args.device,
            warmup=args.warmup,
            iterations=args.iterations,
            cells=order,
            count_flops=flops is None,
            flops=flops,
        )
        print(f"{dtype} compile={mode}: {share:.0f} s", file=sys.stderr, flush=True)
        cells, meta = run_group(job, share) if share > 1 else ([], {"stopped": "no budget left"})
        flops = meta.get("FLOPS", flops)
        report.update(meta.get("INFO", {}))
        reported = {(c["batch"], c["K"]): c for c in cells}
        why = meta.get("stopped") or f"the worker ended early (exit code {meta.get('returncode')})"
        for batch, steps in order:
            cell = reported.get(
                (batch, steps), {"batch": batch, "K": steps, "status": "skipped", "reason": f"not reached: {why}"}
            )
            report["cells"].append({**cell, "dtype": dtype, "compile": mode, "channels_last": args.channels_last})
        report.update(elapsed_s=time.time() - start, flops=flops)
        write(report, args)
    print(markdown(report))
    return 0


def _fill(report: dict) -> None:
    peak, source = peak_tflops(report.get("device", ""), report.get("peak_override"))
    report.update(peak_tflops=peak, peak_source=source)
    flops = report.get("flops")
    for cell in report["cells"]:
        if cell["status"] != "measured" or not flops:
            continue
        per_image = flops["a"] + flops["b"] * cell["K"]
        achieved = per_image * cell["image_iterations_per_s"] / 1e12
        cell.update(
            flop_per_image_iteration=per_image,
            tflops_achieved=achieved,
            fraction_of_peak=achieved / peak if peak else None,
        )


def write(report: dict, args) -> None:
    report["peak_override"] = args.peak_tflops
    _fill(report)
    with open(f"{args.out}.json", "w") as f:
        json.dump(report, f, indent=1)
    with open(f"{args.out}.md", "w") as f:
        f.write(markdown(report) + "\n")


def markdown(report: dict) -> str:
    def num(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [
        f"DiffInvPipeline `{report['model']}` (random weights), {report.get('size', '?')} px, target "
        f"tf_efficientnet_lite0, checkpointing on, {report.get('device', '?')}, torch {report.get('torch', '?')}; "
        f"{report['warmup']} warm-up + {report['iterations']} timed iterations per cell; channels-last "
        f"{'on' if report['channels_last'] else 'off'}; peak bf16 {num(report.get('peak_tflops'), '.0f')} TFLOP/s "
        f"({report.get('peak_source')}); {report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget.",
        f"Command: `{report['command']}`",
        "",
        "| batch | K | dtype | compile | image-iterations / s | s / iteration | s / image-iteration | first iteration (s) "
        "| compile (s) | peak memory (MiB) | TFLOP / image-iteration | % of peak bf16 | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        measured = c["status"] == "measured"
        fraction = c.get("fraction_of_peak")
        lines.append(
            f"| {c['batch']} | {c['K']} | {c['dtype']} | {c['compile']} "
            f"| {num(c.get('image_iterations_per_s'), '.2f')} | {num(c.get('s_per_iteration'), '.3f')} "
            f"| {num(c['s_per_iteration'] / c['batch'] if measured else None, '.3f')} "
            f"| {num(c.get('first_iteration_s'), '.1f')} | {num(c.get('compile_s'), '.1f')} "
            f"| {num(c.get('peak_mib'), '.0f')} | {num((c.get('flop_per_image_iteration') or 0) / 1e12 or None, '.3g')} "
            f"| {num(None if fraction is None else 100 * fraction, '.1f')} "
            f"| {'measured' if measured else 'skipped: ' + c['reason']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
