"""The audit's work items (:class:`UtilityItem`, :class:`AttackItem`), their record key, and where the run
folder keeps each output (images, trained models, trained defenses)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...defenses import Defense

__all__ = [
    "ATTACKERS",
    "AttackItem",
    "UtilityItem",
    "audit_image_path",
    "decoder_folder",
    "defense_folder",
    "model_folder",
]

ATTACKERS = ("naive", "adaptive")
DEFENSE = "defense"  # the `method` of a learned defense's training record


def _slug(spec: str) -> str:
    return spec.replace(":", "-").replace("+", "_")


def model_folder(out_dir, kind: str, spec: str) -> Path:
    """Where the audit trains the models of ``kind`` that know defense setting ``spec``: ``KINDs/SPEC/LAYER``
    (``none``: the naive attacker's)."""
    return Path(out_dir) / f"{kind}s" / _slug(spec)


def decoder_folder(out_dir, defense: Defense) -> Path:
    """Where the audit trains the decoders that know ``defense``: ``decoders/SPEC/LAYER`` (``none``: the naive one)."""
    return model_folder(out_dir, "decoder", defense.spec)


def defense_folder(out_dir, spec: str, layer: str) -> Path:
    """Where the audit trains learned defense setting ``spec`` at ``layer``: ``defenses/SPEC/LAYER``."""
    return Path(out_dir) / "defenses" / _slug(spec) / layer


def audit_image_path(out_dir, layer: str, defense: str, method: str, attacker: str, seed: int, name: str) -> Path:
    """``images/LAYER/DEFENSE/METHOD_ATTACKER/NAME_seedS.png``."""
    return Path(out_dir) / "images" / layer / _slug(defense) / f"{method}_{attacker}" / f"{name}_seed{seed}.png"


@dataclass(frozen=True)
class UtilityItem:
    """The deployment's utility at ``layer`` under defense setting ``defense``, on the images of a chunk."""

    layer: str
    defense: str
    images: range

    def __str__(self) -> str:
        return f"{self.layer} {self.defense} utility images {self.images.start}-{self.images.stop - 1}"


@dataclass(frozen=True)
class AttackItem:
    """``method``'s attack (``attacker``: naive or adaptive) on the defended features of a chunk of images."""

    layer: str
    defense: str
    method: str
    attacker: str
    seed: int
    images: range

    def __str__(self) -> str:
        return (
            f"{self.layer} {self.defense} {self.method} {self.attacker} images {self.images.start}-"
            f"{self.images.stop - 1}"
        )


def audit_key(record: Mapping) -> tuple:
    """The key of an audit record: which item's it is."""
    return (
        record["kind"],
        record["layer"],
        record["defense"],
        record.get("method", ""),
        record.get("attacker", ""),
        record.get("seed", 0),
        record.get("image", ""),
    )


def defense_seed(layer: str, spec: str, start: int) -> int:
    """The seed of a chunk's defense draw: depends on the layer, the setting and the chunk, nothing else."""
    return zlib.crc32(f"{layer}|{spec}|{start}".encode())
