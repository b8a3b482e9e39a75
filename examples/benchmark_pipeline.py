"""Speed and memory of one optimization iteration of DiffInvPipeline, as K grows.

Builds a random-weight pipeline from a definition in ``pipelines/`` (``tiny``, ``sd15``,
``sd-turbo``; no weights needed, fully offline), inverts features of the real
EfficientNet-Lite0 and prints a markdown table: seconds per optimization iteration and
peak memory for each number of sampling steps K, with activation checkpointing on and
off, per dtype.

* Seconds per iteration: the time between consecutive ``callback_on_step_end`` calls
  (the median over iterations 2..N; the first one includes warm-up).
* Peak memory, GPU: ``torch.cuda.max_memory_allocated`` during the call; "above weights"
  subtracts what was allocated before it (weights, features).
* Peak memory, CPU: every configuration runs in a fresh process; the process's peak
  resident set size (``ru_maxrss``) after the call, and that minus the peak before it
  (weights, features) — the memory the iterations themselves needed. glibc keeps freed
  memory of small and mid-size blocks in its heap, which inflates this with the number of
  allocations; ``--malloc-mmap-threshold 65536`` makes every block of 64 KiB or more its own
  mapping, returned when freed, for a tighter figure (the iterations get slower: use the
  default run for timing).
* Saved activations: the bytes of the distinct tensors autograd keeps from the forward pass
  for the backward pass (weights excluded), recorded with ``saved_tensors_hooks`` — exactly
  the memory that grows with K; with checkpointing only the inputs of each UNet call and the
  sampler's arithmetic are kept.

    python examples/benchmark_pipeline.py --size tiny --steps 1 4 20 --iterations 3
    python examples/benchmark_pipeline.py --size sd15 --steps 1 4 20 --iterations 3 --dtype fp32 fp16 bf16   # GPU
    python examples/benchmark_pipeline.py --size sd15 --height 256 --width 256 --steps 1 --iterations 2      # CPU

Random weights give the real cost, not real images: the numbers are for speed and memory only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", help="pipeline definition: tiny, sd15, sd-turbo (or a definition folder)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 20], help="sampling steps K")
    p.add_argument("--iterations", type=int, default=3, help="optimization iterations per configuration (>= 2)")
    p.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES),
                   help="network dtypes (default: fp32 on CPU; fp32 fp16 bf16 on GPU)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=1, help="feature maps inverted at once")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="> 1 runs classifier-free guidance (2x UNet)")
    p.add_argument("--layer", default="blocks.2", help="EfficientNet-Lite0 layer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="CPU: MALLOC_MMAP_THRESHOLD_ for the worker processes (tighter peak RSS, slower)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one configuration, JSON in and out
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(size: str, steps: int, checkpointing: bool, dtype: str, iterations: int, height, width, batch: int,
            guidance_scale: float, layer: str, device: str, threads: int | None) -> dict:
    """One configuration in this process."""
    if threads:
        torch.set_num_threads(threads)
    from diffinv.pipelines import load_pipeline
    from diffinv.targets import TargetNetwork

    target = TargetNetwork.from_name("tf_efficientnet_lite0", layer, input_size=None)
    pipe = load_pipeline(size, target=target, torch_dtype=DTYPES[dtype], device=device)
    pipe.set_progress_bar_config(disable=True)
    sample = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or sample, width or sample
    with torch.no_grad():
        features = target.feature(torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device))

    stamps, saved = [], {}
    weights = {p.data_ptr() for m in (pipe.unet, pipe.vae, pipe.text_encoder, target) for p in m.parameters()}

    def pack(tensor):
        if tensor.data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    gradient_step = pipe._gradient_step

    def measured_gradient_step(*a, **kw):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            return gradient_step(*a, **kw)

    pipe._gradient_step = measured_gradient_step

    def callback(_pipe, _step, _timestep, kwargs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = peak_rss_mib()
    start = time.perf_counter()
    out = pipe(features, prompt="", height=height, width=width, num_inference_steps=steps, num_iterations=iterations,
               guidance_scale=guidance_scale, gradient_checkpointing=checkpointing, generator=torch.Generator().manual_seed(0),
               output_type="pt", callback_on_step_end=callback)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak, above = torch.cuda.max_memory_allocated() / 2**20, (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = peak_rss_mib()
        above = peak - before
    per_iteration = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    return {
        "size": size, "image": f"{height}x{width}", "batch": batch, "K": steps, "checkpointing": checkpointing,
        "dtype": dtype, "device": device, "threads": torch.get_num_threads(),
        "s_per_iteration": statistics.median(per_iteration[1:]) if len(per_iteration) > 1 else per_iteration[0],
        "first_iteration_s": per_iteration[0], "peak_mib": peak, "above_weights_mib": above,
        "saved_activations_mib": sum(saved.values()) / 2**20,
        "skipped_steps": out.skipped_steps, "loss": [float(v) for v in out.loss_history[-1]],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_one(**json.loads(args.worker))), flush=True)
        return 0
    if args.iterations < 2:
        raise SystemExit("error: `--iterations` must be at least 2 (the first iteration is warm-up).")
    on_gpu = args.device.startswith("cuda")
    dtypes = args.dtype or (["fp32", "fp16", "bf16"] if on_gpu else ["fp32"])
    if not on_gpu and "fp16" in dtypes:
        print("note: fp16 is skipped on CPU (use bf16 there).", file=sys.stderr)
        dtypes = [d for d in dtypes if d != "fp16"]
    rows, load = [], os.getloadavg()[0]
    for dtype in dtypes:
        for steps in args.steps:
            for ckpt in args.checkpointing:
                config = dict(size=args.size, steps=steps, checkpointing=ckpt == "on", dtype=dtype,
                              iterations=args.iterations, height=args.height, width=args.width, batch=args.batch,
                              guidance_scale=args.guidance_scale, layer=args.layer, device=args.device,
                              threads=args.threads)
                if on_gpu:  # the CUDA peak counter resets per configuration
                    row = run_one(**config)
                else:  # a fresh process per configuration: its peak RSS belongs to this configuration alone
                    env = dict(os.environ)
                    if args.malloc_mmap_threshold:
                        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
                    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)],
                                          capture_output=True, text=True, env=env)
                    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                    if done.returncode != 0 or not lines:
                        raise SystemExit(f"configuration {config} failed:\n{done.stderr[-3000:]}")
                    row = json.loads(lines[-1][len("RESULT "):])
                rows.append(row)
                print(f"K={steps:<3} checkpointing={ckpt:<3} {dtype}: {row['s_per_iteration']:.3f} s/it, "
                      f"peak {row['peak_mib']:.0f} MiB ({row['above_weights_mib']:.0f} above weights, "
                      f"{row['saved_activations_mib']:.1f} saved activations)",
                      file=sys.stderr, flush=True)
    print(table(rows, args, load))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def table(rows: list[dict], args, load: float) -> str:
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {rows[0]['threads']} thread(s)"
    lines = [
        f"DiffInvPipeline `{args.size}` (random weights), {rows[0]['image']}, batch {args.batch}, "
        f"target tf_efficientnet_lite0.{args.layer}, {device}, {args.iterations} iterations per row "
        f"(load average {load:.1f} -> {os.getloadavg()[0]:.1f}: other processes share the machine when above 0)",
        "",
        f"| K | checkpointing | dtype | s / iteration | {memory} (MiB) | above weights (MiB) | saved activations (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['K']} | {'on' if r['checkpointing'] else 'off'} | {r['dtype']} | {r['s_per_iteration']:.3f} "
                     f"| {r['peak_mib']:.0f} | {r['above_weights_mib']:.0f} | {r['saved_activations_mib']:.2f} |")
    ks = sorted({r["K"] for r in rows})
    if len(ks) > 1:
        lines.append("")
        for dtype in dict.fromkeys(r["dtype"] for r in rows):
            for ckpt in (True, False):
                sel = {r["K"]: r for r in rows if r["dtype"] == dtype and r["checkpointing"] == ckpt}
                if ks[0] in sel and ks[-1] in sel:
                    lo, hi = sel[ks[0]], sel[ks[-1]]
                    lines.append(
                        f"- {dtype}, checkpointing {'on' if ckpt else 'off'}: K={ks[-1]} vs K={ks[0]}: peak "
                        f"{hi['peak_mib'] / lo['peak_mib']:.2f}x, above weights "
                        f"{hi['above_weights_mib'] / max(lo['above_weights_mib'], 1e-9):.2f}x, saved activations "
                        f"{hi['saved_activations_mib'] / max(lo['saved_activations_mib'], 1e-9):.2f}x, time "
                        f"{hi['s_per_iteration'] / lo['s_per_iteration']:.1f}x"
                    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
