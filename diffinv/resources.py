"""Memory: the estimated peak of a requested job, checked against what the machine has, before any work.

A job that cannot fit is refused at once with the estimate and the available memory
(:class:`InsufficientMemoryError`), instead of filling the machine until the allocator fails. The estimate errs
high: the job's images (float32, host memory); the target's weights and activations up to the deepest requested
layer for one batch (measured on the ``meta`` device: shapes only); each method's own state for one batch, as it
declares it (``Inverter.memory_cost``, :func:`diffusion_cost`); times :data:`MARGIN`; and each extra local
process's base (:data:`PROCESS_BASE_BYTES`). Of several methods of one job the largest counts. Training a decoder
or mapper: :func:`estimate_training`.

Example:
    >>> estimate = estimate_memory("tf_efficientnet_lite0", ["blocks.6"], 128, images=4, methods=memory_costs(["dip"]))
    >>> check_memory(estimate, "cpu")  # raises InsufficientMemoryError when it does not fit
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .targets import TargetNetwork

__all__ = [
    "ComputeShape",
    "MARGIN",
    "PROCESS_BASE_BYTES",
    "InsufficientMemoryError",
    "MemoryEstimate",
    "activation_bytes",
    "available_memory",
    "check_job_memory",
    "check_memory",
    "estimate_memory",
    "diffusion_cost",
    "estimate_training",
    "learned_model_cost",
    "format_bytes",
]

MARGIN = 1.5
# What one more process of a job costs before its work (--workers): its own Python, PyTorch and libraries. Measured
# on a 2-core CPU machine (torch 2.14.1+cu130, torchvision 0.29.1, run on the CPU): `import torch, torchvision,
# diffinv` then tf_efficientnet_lite0 built (`TargetNetwork.from_name(..., weights="random:0")`): 739 MiB resident
# (psutil's rss and uss alike); a whole `python -m diffinv bench` of one 32 px pixel item (LPIPS and the scorers
# loaded): 982 MiB at its peak (`/usr/bin/time -v`, maximum resident set). Rounded up to 1 GiB. The process that
# checks is already running, so only the processes that --workers starts count it.
PROCESS_BASE_BYTES = 1024 * 2**20
# Stable Diffusion (UNet width 1280, VAE width 512), float32, per image pixel and image: one checkpointed
# UNet call with its backward at the latent size (H/8 x W/8), and one VAE decode with its backward.
_SD_UNET_BYTES_PER_PIXEL = 24_000
_SD_VAE_BYTES_PER_PIXEL = 12_000
_SD_PARAMETERS = 1.1e9  # UNet + VAE + text encoder of Stable Diffusion 1.5
# Learned decoders and mappers (UpconvNet-size networks), per image pixel, forward only.
_DECODER_BYTES_PER_PIXEL = 2_000
_DECODER_WEIGHTS = 200 * 2**20
_SD_VAE_PARAMETERS = 84e6  # the VAE of Stable Diffusion 1.5 (encoder and decoder)


@dataclass(frozen=True)
class ComputeShape:
    """What a method's memory cost (``Inverter.memory_cost``) depends on besides its options.

    Attributes:
        pixels: image pixels of one batch (``H * W * batch``).
        batch: images inverted together.
        half: 0.5 where weights and activations are float16 (CUDA), else 1.
    """

    pixels: int
    batch: int
    half: float = 1.0


def diffusion_cost(model: str | os.PathLike | None, shape: ComputeShape) -> dict[str, int]:
    """Stable Diffusion's weights and the activations of one checkpointed UNet call and VAE decode for one
    batch, scaled by the widths in ``model``'s ``config.json`` files (``None``: Stable Diffusion 1.5's)."""
    unet, vae = _widths(model)
    weights = _SD_PARAMETERS * 4 * shape.half * max(unet, vae) ** 2
    activations = (_SD_UNET_BYTES_PER_PIXEL * unet + _SD_VAE_BYTES_PER_PIXEL * vae) * shape.pixels * shape.half
    return {"diffusion weights": int(weights), "diffusion activations": int(activations)}


def learned_model_cost(shape: ComputeShape) -> int:
    """A learned decoder's or mapper's (UpconvNet-size) weights and forward activations for one batch."""
    return _DECODER_WEIGHTS + _DECODER_BYTES_PER_PIXEL * shape.pixels


class InsufficientMemoryError(ValueError):
    """The job's estimated peak memory exceeds what the machine has (a user error: exit code 2)."""


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


@dataclass
class MemoryEstimate:
    """A job's estimated peak memory, in bytes, by part.

    Attributes:
        host: parts held in the host's memory (the images).
        compute: parts on the compute device, for the largest method (weights, activations, state),
            margin included, per process.
        processes: processes that run the job side by side on this machine.
        device: the compute device.
    """

    host: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)
    processes: int = 1
    device: str = "cpu"

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def compute_bytes(self) -> int:
        return sum(self.compute.values()) * self.processes

    @property
    def total(self) -> int:
        """Everything, as if on one memory (the host's, on CPU)."""
        return self.host_bytes + self.compute_bytes

    def breakdown(self) -> str:
        """The parts of 1 MiB or more: ``'images 12.0 MiB, target activations 742.8 MiB, ...'``."""

        def parts(d):
            return ", ".join(f"{name} {format_bytes(v)}" for name, v in d.items() if v >= 2**20)

        compute = parts(self.compute)
        if self.processes > 1:
            compute = f"{self.processes} processes x ({compute})"
        return ", ".join(p for p in (parts(self.host), compute) if p)

    def describe(self) -> str:
        """``'1.3 GiB (images 3.0 MiB, ...)'``."""
        return f"{format_bytes(self.total)} ({self.breakdown()})"


# ---------------------------------------------------------------------- measuring networks
def activation_bytes(module: nn.Module, *inputs: torch.Tensor, stop_at: str | None = None) -> int:
    """Bytes of the outputs of ``module``'s leaf modules in one forward pass (what autograd keeps for
    the backward pass, counted generously: in-place activations are counted again).

    Run it on a module and inputs on the ``meta`` device: shapes are computed, nothing is allocated.
    ``stop_at`` names a submodule after which the count stops (the forward pass is cut there).
    """
    total = 0

    class _Stop(Exception):
        pass

    def count(_module, _inputs, output):
        nonlocal total
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                total += out.numel() * out.element_size()

    modules = dict(module.named_modules())
    handles = [m.register_forward_hook(count) for m in modules.values() if not any(True for _ in m.children())]
    if stop_at is not None:

        def stop(*_):
            raise _Stop

        handles.append(modules[stop_at].register_forward_hook(stop))
    try:
        with torch.no_grad():
            module(*inputs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return total


@functools.lru_cache(maxsize=32)
def _target_costs(name: str, layers: tuple[str, ...], size: tuple[int, int]) -> tuple[int, int]:
    """``(weight bytes, activation bytes for one image up to the deepest of layers)`` of a named target."""
    with torch.device("meta"):
        target = TargetNetwork.from_name(name, list(layers), weights=None, input_size=None)
    weights = sum(p.numel() * p.element_size() for p in target.model.parameters())
    deepest = max(layers, key=list(dict(target.model.named_modules())).index)
    x = torch.zeros(1, 3, *size, device="meta")
    return weights, activation_bytes(target.model, target.preprocess(x), stop_at=deepest)


def _widths(model_dir: str | os.PathLike | None) -> tuple[float, float]:
    """UNet and VAE widths (largest ``block_out_channels``) of a diffusers folder relative to Stable
    Diffusion's (1280, 512); Stable Diffusion's own when the folder cannot be read (a Hub id)."""

    def width(component: str, default: int) -> float:
        try:
            config = json.loads((Path(model_dir) / component / "config.json").read_text(encoding="utf-8"))
            return max(config["block_out_channels"]) / default
        except (OSError, TypeError, KeyError, ValueError):
            return 1.0

    if model_dir is None:
        return 1.0, 1.0
    return width("unet", 1280), width("vae", 512)


# ---------------------------------------------------------------------- the estimate
def estimate_memory(
    target: str,
    layers: str | Sequence[str],
    size: int | tuple[int, int],
    *,
    images: int = 1,
    batch_size: int | None = None,
    methods: Mapping[str, Callable[[ComputeShape], dict[str, int]]] | None = None,
    input_size: int | tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    processes: int = 1,
) -> MemoryEstimate:
    """The estimated peak memory of inverting ``images`` images of ``size`` with ``methods``.

    Args:
        target: a target name (as :meth:`TargetNetwork.from_name`); its architecture is probed on
            the ``meta`` device, so no weights are read.
        layers: the layers inverted (the deepest one counts).
        size: image size (an int means square).
        images: images held by the job (frames of a video).
        batch_size: images inverted together (default: all of them).
        methods: each method's cost (``shape -> {part: bytes}``, the method's declared
            ``memory_cost`` with its options: :func:`diffinv.inverters.memory_costs`), by name; they run
            one after another, so the largest counts.
        input_size: the size the target is fed at, when it resizes (default: ``size``).
        device: the compute device (float16 weights and activations are assumed on CUDA).
        processes: processes that run the job side by side (``--workers``).

    Raises:
        ValueError: ``target`` or a layer is unknown.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    fh, fw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size or (h, w))
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    batch = max(1, min(batch_size or images, images))
    device = torch.device(device)
    half = 0.5 if device.type == "cuda" else 1.0
    pixels = h * w * batch
    estimate = MemoryEstimate(host={"images": images * 3 * h * w * 4}, processes=processes, device=str(device))
    if processes > 1:  # the processes --workers starts, each with its own Python, PyTorch and libraries
        estimate.host[f"{processes} process bases"] = processes * PROCESS_BASE_BYTES

    weights, activations = _target_costs(target, layers, (fh, fw))
    base = {"target weights": weights, "target activations": activations * batch}
    shape = ComputeShape(pixels, batch, half)
    costs = {name: cost(shape) for name, cost in (methods or {}).items()}
    # hybrid starts run before the chain and are freed: the largest single method counts
    largest = max(costs.values(), key=lambda c: sum(c.values()), default={})
    estimate.compute = {k: int(v * MARGIN) for k, v in {**base, **largest}.items()}
    return estimate


# ---------------------------------------------------------------------- what the machine has
def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup (v2 or v1) limit, or None when there is no limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def _host_available() -> int:
    """Available host memory: psutil's, else /proc/meminfo's MemAvailable, within a cgroup limit."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = None
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        if available is None:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_available()
    return available if cgroup is None else min(available, cgroup)


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes free now: the GPU's free memory on CUDA (``torch.cuda.mem_get_info``), else the host's."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(
            torch.cuda.mem_get_info(device.index if device.index is not None else torch.cuda.current_device())[0]
        )
    return _host_available()


def check_memory(
    estimate: MemoryEstimate,
    device: str | torch.device | None = None,
    *,
    job: str = "the job",
    hint: str = "Use a smaller image size, batch size or number of images (or a shallower layer).",
) -> MemoryEstimate:
    """Raises :class:`InsufficientMemoryError` when ``estimate`` does not fit the memory available now.

    On CUDA the compute part is compared with the GPU's free memory and the images with the host's;
    on CPU everything with the host's. ``job`` and ``hint``: what the message calls the job, and what it
    advises.
    """
    device = torch.device(device if device is not None else estimate.device)
    checks = (
        [
            ("GPU memory", estimate.compute_bytes, available_memory(device)),
            ("host memory", estimate.host_bytes, available_memory("cpu")),
        ]
        if device.type == "cuda"
        else [("memory", estimate.total, available_memory("cpu"))]
    )
    for what, need, have in checks:
        if need > have:
            raise InsufficientMemoryError(
                f"{job} needs an estimated {format_bytes(need)} of {what} at its peak ({estimate.breakdown()}), "
                f"but only {format_bytes(have)} is available on {device}. {hint}"
            )
    return estimate


def estimate_training(
    target: str,
    layer: str,
    size: int | tuple[int, int],
    model: nn.Module,
    *,
    batch_size: int,
    name: str = "decoder",
    feature_loss: bool = False,
    vae: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> MemoryEstimate:
    """The estimated peak memory of training ``model`` (a decoder or mapper, built on the ``meta`` device: no
    memory) on batches of ``batch_size`` crops of ``size`` and their features at the target's ``layer``.

    Counted, float32, times :data:`MARGIN`: the model's weights, their gradients and AdamW's two moments; its
    activations for one batch (measured on the ``meta`` device) and their gradients; the target's weights and
    activations up to ``layer`` (kept for the backward pass with ``feature_loss``); a mapper's ``vae`` (its
    diffusers folder: weights, and the activations of encoding the batch); the batch of images. The training
    images themselves are loaded after the check and are not counted.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    parameters = sum(p.numel() for p in model.parameters())
    feature_shape = getattr(model.config, "feature_shape", None) if hasattr(model, "config") else None
    if feature_shape is None:
        raise ValueError("`model` must record its `feature_shape` in its config (a decoder or a mapper).")
    features = torch.zeros(batch_size, *feature_shape, device="meta")
    weights, target_activations = _target_costs(target, (layer,), (h, w))
    parts = {
        f"{name} weights": 4 * parameters,
        f"{name} gradients": 4 * parameters,
        "optimizer state": 8 * parameters,
        f"{name} activations": 2 * activation_bytes(model, features),
        "target weights": weights,
        "target activations": target_activations * batch_size * (2 if feature_loss else 1),
        "training batch": 2 * batch_size * 3 * h * w * 4,
    }
    if vae is not None:
        width = _widths(vae)[1]
        parts["vae"] = int(_SD_VAE_PARAMETERS * 4 * width**2 + _SD_VAE_BYTES_PER_PIXEL * width * batch_size * h * w)
    return MemoryEstimate(compute={k: int(v * MARGIN) for k, v in parts.items()}, device=str(torch.device(device)))


def check_job_memory(target: str, layers, size, *, device: str | torch.device = "cpu", **job) -> MemoryEstimate:
    """:func:`estimate_memory` then :func:`check_memory`: the one call before a job's work starts.

    Raises:
        InsufficientMemoryError: the job does not fit (the message gives the estimate and the memory available).
    """
    return check_memory(estimate_memory(target, layers, size, device=device, **job), device)
