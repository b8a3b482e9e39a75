"""Dead-filter diagnostics: per-channel statistics streamed over any number of images.

For each layer and channel: the maximum activation (over every image and position), the
fraction of images on which the channel is active (its maximum on the image > ``eps``), and the
mean and variance over every image and position (Chan et al.'s parallel update, float64). Memory
depends on the number of channels, never on the number of images.

* **dead**: max activation <= ``eps`` on every image and position;
* **rarely active**: active on fewer than ``rare_fraction`` of the images (dead ones excluded);
* **constant**: variance <= ``variance_eps`` (a dead channel behind a ReLU is constant too).

Example:
    >>> report = dead_filter_report(target, ["blocks.2.0.bn1"], (images[i:i + 8] for i in range(0, 64, 8)))
    >>> report.layers["blocks.2.0.bn1"]["dead"]
    [3, 17]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import atomic_path, save_figure, write_json
from ..targets import TargetNetwork
from .objectives import check_feature_map

__all__ = ["ChannelStatistics", "DeadFilterReport", "dead_filter_report"]


class ChannelStatistics:
    """Running per-channel statistics of one layer's ``(B, C, H, W)`` feature maps.

    Args:
        eps: a channel is *active* on an image when its maximum there is > ``eps``.
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps
        self.images = 0
        self.values = 0  # positions seen per channel (images x H x W)
        self.max = self.active = self.mean = self.m2 = None

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        f = features.detach().double().flatten(2)  # (B, C, P)
        b, c, p = f.shape
        if self.max is None:
            self.max = torch.full((c,), -torch.inf, dtype=torch.float64)
            self.active = torch.zeros(c, dtype=torch.long)
            self.mean = torch.zeros(c, dtype=torch.float64)
            self.m2 = torch.zeros(c, dtype=torch.float64)
        per_image_max = f.amax(2).cpu()  # (B, C)
        self.max = torch.maximum(self.max, per_image_max.amax(0))
        self.active += (per_image_max > self.eps).sum(0)
        n_new = b * p
        mean_new = f.mean(dim=(0, 2)).cpu()
        m2_new = ((f - f.mean(dim=(0, 2), keepdim=True)) ** 2).sum(dim=(0, 2)).cpu()
        n = self.values + n_new
        delta = mean_new - self.mean
        self.mean = self.mean + delta * n_new / n
        self.m2 = self.m2 + m2_new + delta**2 * self.values * n_new / n
        self.values, self.images = n, self.images + b

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.values, 1)

    @property
    def active_fraction(self) -> torch.Tensor:
        return self.active.double() / max(self.images, 1)


@dataclass
class DeadFilterReport:
    """Per layer: ``num_channels``, ``dead``, ``rarely_active``, ``constant`` (channel lists) and the
    per-channel ``max``, ``active_fraction``, ``mean``, ``variance``; plus the thresholds and image count."""

    layers: dict
    num_images: int
    eps: float
    rare_fraction: float
    variance_eps: float
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "num_images": self.num_images,
            "eps": self.eps,
            "rare_fraction": self.rare_fraction,
            "variance_eps": self.variance_eps,
            **self.settings,
            "layers": self.layers,
        }

    def markdown(self) -> str:
        def listed(channels, limit=24):
            return ", ".join(map(str, channels[:limit])) + (
                f", ... ({len(channels)})" if len(channels) > limit else ""
            )

        lines = [
            f"Dead-filter report over {self.num_images} images: dead = max activation <= {self.eps:g} everywhere; "
            f"rarely active = active (max > {self.eps:g}) on fewer than {100 * self.rare_fraction:g} % of the "
            f"images; constant = variance <= {self.variance_eps:g}.",
            "",
            "| layer | channels | dead | rarely active | constant | dead channels | rarely active channels |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in self.layers.items():
            lines.append(
                f"| {name} | {row['num_channels']} | {len(row['dead'])} | {len(row['rarely_active'])} | "
                f"{len(row['constant'])} | {listed(row['dead']) or '-'} | {listed(row['rarely_active']) or '-'} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Writes ``report.json``, ``report.md`` and ``histograms.png`` into ``out_dir``."""
        out_dir = Path(out_dir)
        write_json(out_dir / "report.json", self.to_json())
        with atomic_path(out_dir / "report.md") as tmp:
            tmp.write_text(self.markdown(), encoding="utf-8")
        return [out_dir / "report.json", out_dir / "report.md", self.plot(out_dir / "histograms.png")]

    def plot(self, path: str | os.PathLike) -> Path:
        """Per layer: histograms of the channels' max activation and of their active fraction."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(self.layers), 2, figsize=(9, 2.4 * len(self.layers)), dpi=100, squeeze=False)
        for (name, row), (ax_max, ax_frac) in zip(self.layers.items(), axes):
            ax_max.hist(row["max"], bins=40, color="tab:blue")
            ax_max.axvline(self.eps, color="tab:red", linestyle="--", linewidth=1)
            ax_max.set_title(f"{name}: max activation ({len(row['dead'])} dead)", fontsize=9)
            ax_frac.hist(row["active_fraction"], bins=20, range=(0, 1), color="tab:green")
            ax_frac.axvline(self.rare_fraction, color="tab:red", linestyle="--", linewidth=1)
            ax_frac.set_title(f"{name}: fraction of images active ({len(row['rarely_active'])} rare)", fontsize=9)
            ax_max.set_ylabel("channels")
        axes[-1][0].set_xlabel("max activation over images and positions")
        axes[-1][1].set_xlabel("fraction of images with max > eps")
        fig.tight_layout()
        return save_figure(fig, path)


@torch.no_grad()
def dead_filter_report(
    target: TargetNetwork,
    layers: Sequence[str],
    batches: Iterable[torch.Tensor],
    *,
    eps: float = 1e-6,
    rare_fraction: float = 0.01,
    variance_eps: float = 1e-10,
    total: int | None = None,
    progress: bool = True,
) -> DeadFilterReport:
    """Streams ``batches`` of images ``(B, 3, H, W)`` in [0, 1] through ``target`` and classifies every channel.

    Args:
        target: the network.
        layers: layers whose outputs are feature maps.
        batches: any iterable of image batches (e.g. files loaded a batch at a time).
        eps, rare_fraction, variance_eps: the thresholds (see the module docstring).
        total: the number of batches, for the progress bar.

    Raises:
        ValueError: no images came, or a layer's output is not a 4-D feature map.
    """
    layers = list(dict.fromkeys(layers))
    stats = {layer: ChannelStatistics(eps) for layer in layers}
    device = target.mean.device
    for images in tqdm(batches, total=total, desc="dead filters", disable=not progress):
        feats = target.forward(images.to(device), layers=layers)
        for layer in layers:
            stats[layer].update(check_feature_map(feats[layer], layer))
    seen = stats[layers[0]].images if layers else 0
    if seen == 0:
        raise ValueError("no images: the dataset is empty; give image files or folders that hold images.")
    rows = {}
    for layer, s in stats.items():
        dead = (s.max <= eps).nonzero().flatten().tolist()
        rare = ((s.active_fraction < rare_fraction) & (s.max > eps)).nonzero().flatten().tolist()
        constant = (s.variance <= variance_eps).nonzero().flatten().tolist()
        rows[layer] = {
            "num_channels": len(s.max),
            "dead": dead,
            "rarely_active": rare,
            "constant": constant,
            "max": s.max.tolist(),
            "active_fraction": s.active_fraction.tolist(),
            "mean": s.mean.tolist(),
            "variance": s.variance.tolist(),
        }
    return DeadFilterReport(rows, seen, eps, rare_fraction, variance_eps)
