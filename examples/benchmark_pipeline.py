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
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="tiny", help="pipeline definition: tiny, sd15, sd-turbo (or a definition folder)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 20], help="sampling steps K")
    p.add_argument("--iterations", type=int, default=3, help="optimization iterations per configuration (>= 2)")
    p.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument(
        "--dtype",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="network dtypes (default: fp32 on CPU; fp32 fp16 bf16 on GPU)",
    )
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=1, help="feature maps inverted at once")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="> 1 runs classifier-free guidance (2x UNet)")
    p.add_argument("--layer", default="blocks.2", help="EfficientNet-Lite0 layer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        help="CPU: MALLOC_MMAP_THRESHOLD_ for the worker processes (tighter peak RSS, slower)",
    )
    p.add_argument("--compile", action="store_true", help="also run each configuration with compile=True")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time the floor: one UNet forward+backward per step, the VAE decode and the target "
        "(+ the recompute of checkpointing), to compare with the loop's seconds per iteration",
    )
    p.add_argument("--target-weights", default="default", help="EfficientNet-Lite0 weights (default, random:SEED)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one configuration, JSON in and out
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


_PIPELINES: dict = {}  # GPU: one pipeline per (size, dtype, layer), reused across configurations


def build(size: str, dtype: str, layer: str, device: str, target_weights: str):
    from diffinv.pipelines import load_pipeline
    from diffinv.targets import TargetNetwork

    key = (size, dtype, layer, device, target_weights)
    if key not in _PIPELINES:
        _PIPELINES.clear()
        target = TargetNetwork.from_name("tf_efficientnet_lite0", layer, input_size=None, weights=target_weights)
        pipe = load_pipeline(size, target=target, torch_dtype=DTYPES[dtype], device=device)
        pipe.set_progress_bar_config(disable=True)
        _PIPELINES[key] = pipe
    pipe = _PIPELINES[key]
    return pipe, pipe.target


def run_one(
    size: str,
    steps: int,
    checkpointing: bool,
    dtype: str,
    iterations: int,
    height,
    width,
    batch: int,
    guidance_scale: float,
    layer: str,
    device: str,
    threads: int | None,
    compile: bool = False,
    floor: bool = False,
    target_weights: str = "default",
) -> dict:
    """One configuration in this process."""
    if threads:
        torch.set_num_threads(threads)
    pipe, target = build(size, dtype, layer, device, target_weights)
    sample = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or sample, width or sample
    with torch.no_grad():
        features = target.feature(
            torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
        )

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
    out = pipe(
        features,
        prompt="",
        height=height,
        width=width,
        num_inference_steps=steps,
        iterations=iterations,
        guidance_scale=guidance_scale,
        gradient_checkpointing=checkpointing,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=callback,
        compile=compile,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak, above = torch.cuda.max_memory_allocated() / 2**20, (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = peak_rss_mib()
        above = peak - before
    per_iteration = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    parts = floor_parts(pipe, features, layer, height, width, batch) if floor else None
    return {
        "size": size,
        "image": f"{height}x{width}",
        "batch": batch,
        "K": steps,
        "checkpointing": checkpointing,
        "dtype": dtype,
        "device": device,
        "threads": torch.get_num_threads(),
        "compile": compile,
        "floor_s": None if parts is None else floor_seconds(parts, steps, checkpointing),
        "floor_parts": parts,
        "s_per_iteration": statistics.median(per_iteration[1:]) if len(per_iteration) > 1 else per_iteration[0],
        "first_iteration_s": per_iteration[0],
        "peak_mib": peak,
        "above_weights_mib": above,
        "saved_activations_mib": sum(saved.values()) / 2**20,
        "skipped_steps": out.skipped_steps,
        "loss": [float(v) for v in out.loss_history[-1]],
    }


def _timed(fn, device: str, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_parts(pipe, features, layer: str, height: int, width: int, batch: int) -> dict:
    """Seconds of the networks alone, outside the loop: a UNet forward (with autograd recording, as the
    recompute runs it) and forward+backward, the VAE decode likewise, the target forward+backward."""
    from diffinv.losses import feature_loss
    from diffinv.models.vae import decode_latents

    device = str(pipe._execution_device)
    dtype = pipe.unet.dtype
    latents = torch.randn(
        batch,
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
        device=device,
    )
    embeds = pipe.encode_prompt([""] * batch, device, False)
    t = torch.tensor(999, device=device)

    def unet(backward: bool):
        with torch.enable_grad():
            z = latents.clone().requires_grad_()
            out = pipe.unet(z.to(dtype), t, encoder_hidden_states=embeds, return_dict=False)[0].float()
            if backward:
                out.sum().backward()

    def vae(backward: bool):
        with torch.enable_grad():
            z = latents.clone().requires_grad_()
            out = decode_latents(pipe.vae, z)
            if backward:
                out.sum().backward()

    def target():
        with torch.enable_grad():
            x = torch.rand(batch, 3, height, width, device=device, requires_grad=True)
            feature_loss(
                pipe.target.feature(x.to(next(pipe.target.parameters()).dtype), layer), features, "nmse"
            ).sum().backward()

    return {
        "unet_forward": _timed(lambda: unet(False), device),
        "unet_forward_backward": _timed(lambda: unet(True), device),
        "vae_forward": _timed(lambda: vae(False), device),
        "vae_forward_backward": _timed(lambda: vae(True), device),
        "target_forward_backward": _timed(target, device),
    }


def floor_seconds(parts: dict, steps: int, checkpointing: bool) -> float:
    """The least an iteration can take: K UNet forward+backward, the decode's, the target's, and with
    checkpointing the recompute (one more UNet forward per step and one more decode forward)."""
    floor = steps * parts["unet_forward_backward"] + parts["vae_forward_backward"] + parts["target_forward_backward"]
    if checkpointing:
        floor += steps * parts["unet_forward"] + parts["vae_forward"]
    return floor


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
    configs = [
        dict(
            size=args.size,
            steps=steps,
            checkpointing=ckpt == "on",
            dtype=dtype,
            iterations=args.iterations,
            height=args.height,
            width=args.width,
            batch=args.batch,
            guidance_scale=args.guidance_scale,
            layer=args.layer,
            device=args.device,
            threads=args.threads,
            compile=compile,
            floor=args.floor,
            target_weights=args.target_weights,
        )
        for dtype in dtypes
        for compile in ([False, True] if args.compile else [False])
        for steps in args.steps
        for ckpt in args.checkpointing
    ]
    for config in configs:
        steps, ckpt, dtype = config["steps"], "on" if config["checkpointing"] else "off", config["dtype"]
        if on_gpu:  # the CUDA peak counter resets per configuration
            row = run_one(**config)
        else:  # a fresh process per configuration: its peak RSS belongs to this configuration alone
            env = dict(os.environ)
            if args.malloc_mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"configuration {config} failed:\n{done.stderr[-3000:]}")
            row = json.loads(lines[-1][len("RESULT ") :])
        rows.append(row)
        floor = f", floor {row['floor_s']:.3f} s" if row["floor_s"] else ""
        print(
            f"K={steps:<3} checkpointing={ckpt:<3} {dtype}{' compiled' if row['compile'] else ''}: "
            f"{row['s_per_iteration']:.3f} s/it (first {row['first_iteration_s']:.1f} s){floor}, "
            f"peak {row['peak_mib']:.0f} MiB ({row['above_weights_mib']:.0f} above weights, "
            f"{row['saved_activations_mib']:.1f} saved activations)",
            file=sys.stderr,
            flush=True,
        )
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
        f"| K | checkpointing | dtype | compile | s / iteration | first iteration (s) | floor (s) | loop overhead "
        f"| {memory} (MiB) | above weights (MiB) | saved activations (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor, overhead = "-", "-"
        if r.get("floor_s"):
            floor, overhead = f"{r['floor_s']:.3f}", f"{100 * (r['s_per_iteration'] / r['floor_s'] - 1):+.0f} %"
        lines.append(
            f"| {r['K']} | {'on' if r['checkpointing'] else 'off'} | {r['dtype']} "
            f"| {'yes' if r.get('compile') else 'no'} | {r['s_per_iteration']:.3f} | {r['first_iteration_s']:.1f} "
            f"| {floor} | {overhead} | {r['peak_mib']:.0f} | {r['above_weights_mib']:.0f} "
            f"| {r['saved_activations_mib']:.2f} |"
        )
    ks = sorted({r["K"] for r in rows})
    if len(ks) > 1:
        lines.append("")
        for dtype in dict.fromkeys(r["dtype"] for r in rows):
            for ckpt in (True, False):
                sel = {
                    r["K"]: r
                    for r in rows
                    if r["dtype"] == dtype and r["checkpointing"] == ckpt and not r.get("compile")
                }
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
