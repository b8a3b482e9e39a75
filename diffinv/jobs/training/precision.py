"""The device and the mixed precision of a training run, resolved from its :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses

import torch

from .config import TrainConfig

__all__ = [
    "MIXED_PRECISION",
    "allow_precision",
    "cpu_has_native_bf16",
    "resolved_device",
    "resolved_precision",
    "with_resolved_precision",
]

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def resolved_precision(choice: str, device: torch.device) -> str:
    """``TrainConfig.mixed_precision`` -> what accelerate runs: ``"auto"`` is bf16 (fp16 without it) on a GPU,
    and on the CPU bf16 where the processor computes it natively (:func:`cpu_has_native_bf16`), else ``"no"``."""
    if choice not in MIXED_PRECISION:
        raise ValueError(
            f"`mixed_precision` {choice!r} is not supported; expected one of {', '.join(MIXED_PRECISION)}."
        )
    if choice != "auto":
        return choice
    if device.type == "cpu" or not torch.cuda.is_available():
        return "bf16" if cpu_has_native_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def with_resolved_precision(config: TrainConfig) -> TrainConfig:
    """``config`` with ``mixed_precision`` resolved for its device (``"auto"`` -> what runs): what a job that
    trains decoders records in its own manifest, so that the run says which precision made its numbers."""
    return dataclasses.replace(
        config, mixed_precision=resolved_precision(config.mixed_precision, resolved_device(config.device))
    )


def allow_precision(choice: str) -> None:
    """accelerate keeps one mixed precision per process and refuses another; a training with another one than
    the last (``"no"`` after ``"bf16"``, ...) starts from a fresh ``AcceleratorState``. The process group
    (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", choice) != choice:
        AcceleratorState._reset_state()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there oneDNN runs the decoders'
    convolutions about twice as fast in bf16; elsewhere bf16 is emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolved_device(choice: str | None) -> torch.device:
    """``TrainConfig.device`` -> a device (``None``: CUDA when available)."""
    if not choice:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise ValueError(f"`device` {choice!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'.") from None
