"""Fingerprints: short hashes of model files and folders, and of images as 8-bit pixels."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

__all__ = ["fingerprint_path", "pixels_fingerprint"]


_MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")
_NOT_MODEL = ("checkpoints", "training_log.json", "manifest.json")


def fingerprint_path(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """A short fingerprint of a model file or folder (16 hex digits).

    For a folder, every model file below it (configs and weights; not training checkpoints or
    logs) counts with its relative path, size, and its first and last ``chunk`` bytes: fast on
    multi-GB weights, and any re-trained or replaced model changes it.
    """
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    else:
        root = path
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in _MODEL_SUFFIXES
            and not any(part in _NOT_MODEL or part.startswith(".") for part in p.relative_to(path).parts)
        )
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}:{size}:".encode())
        with open(file, "rb") as f:
            digest.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def pixels_fingerprint(images: torch.Tensor) -> str:
    """A 16-hex-digit fingerprint of images in [0, 1] as 8-bit pixels (what a run inverts and scores against)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:16]
