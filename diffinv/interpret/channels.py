"""Channels of a layer: statistics over images, top channels, per-channel inversion and heat maps.

Per-channel inversion (DeconvNet-style, Zeiler & Fergus 2014): the image's feature map with only
the chosen channel kept and every other channel zeroed is inverted with *any* inverter of the
registry (:meth:`~diffinv.inverters.Inverter.invert`); next to each reconstruction, the channel's
heat map (where it fires on the image) is overlaid on the image.

Example:
    >>> acts = channel_activations(target, "blocks.4", images)          # (N, C) spatial means
    >>> top = top_channels(acts, 4)
    >>> result = invert_channels(PixelInverter(target), image, "blocks.4", top)
    >>> pearson(result.heat_maps, local_energy(result.images))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..features import FeatureSet, check_images
from ..inverters import InversionOutput, Inverter
from ..targets import TargetNetwork
from .objectives import check_channels, check_feature_map

__all__ = [
    "ChannelInversion",
    "channel_activations",
    "heat_maps",
    "invert_channels",
    "keep_channels",
    "local_energy",
    "overlay",
    "pearson",
    "top_channels",
]


@torch.no_grad()
def channel_activations(
    target: TargetNetwork,
    layer: str,
    images: torch.Tensor,
    *,
    reduce: str = "mean",
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """``(N, C)``: each image's mean (``reduce="mean"``) or maximum (``"max"``) activation of each channel
    of ``layer`` over positions, float32 CPU.

    Raises:
        ValueError: no images, or ``layer`` does not output a 4-D feature map.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"`reduce` must be 'mean' or 'max', got {reduce!r}.")
    images = check_images(images)
    device = target.mean.device
    rows = []
    for i in tqdm(range(0, len(images), batch_size), desc=f"activations {layer}", disable=not progress, leave=False):
        feats = check_feature_map(target.feature(images[i : i + batch_size].to(device), layer), layer)
        feats = feats.float().flatten(2)
        rows.append((feats.mean(2) if reduce == "mean" else feats.amax(2)).cpu())
    return torch.cat(rows)


def top_channels(activations: torch.Tensor, n: int) -> list[int]:
    """The ``n`` channels with the highest mean over images of :func:`channel_activations`' rows."""
    if n < 1 or n > activations.shape[1]:
        raise ValueError(
            f"cannot pick the top {n} of {activations.shape[1]} channels; give 1..{activations.shape[1]}."
        )
    return activations.mean(0).topk(n).indices.tolist()


def keep_channels(features: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """``features`` ``(N, C, H, W)`` with every channel but ``channels`` set to zero."""
    mask = torch.zeros(features.shape[1], dtype=torch.bool, device=features.device)
    mask[list(channels)] = True
    return features * mask.view(1, -1, 1, 1).to(features.dtype)


def heat_maps(features: torch.Tensor, channels: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
    """``(K, H, W)`` in [0, 1]: where each channel fires on the image of ``features`` ``(1, C, h, w)``.

    The positive part of the channel's map, upsampled bilinearly to ``size`` and divided by its maximum
    (all zeros where the channel never fires).
    """
    maps = features[0, list(channels)].float().clamp(min=0)[:, None]
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> torch.Tensor:
    """``image`` ``(3, H, W)`` blended with a colour-mapped ``heat`` ``(K, H, W)`` -> ``(K, 3, H, W)``."""
    import matplotlib

    colours = torch.from_numpy(matplotlib.colormaps[cmap](heat.detach().cpu().numpy())[..., :3]).float()
    colours = colours.permute(0, 3, 1, 2)
    return ((1 - alpha) * image.detach().cpu().float()[None] + alpha * colours).clamp(0, 1)


def local_energy(images: torch.Tensor, window: int = 9, reference: str = "local") -> torch.Tensor:
    """``(N, H, W)``: how much is drawn at each pixel of ``images`` ``(N, 3, H, W)``.

    ``reference="local"``: the squared deviation from the local mean (local contrast), ``"grey"``: from
    mid-grey 0.5 (where the optimization starts); summed over colours and averaged over a
    ``window`` x ``window`` neighbourhood.
    """
    if reference not in ("local", "grey"):
        raise ValueError(f"`reference` must be 'local' or 'grey', got {reference!r}.")
    pool = lambda x: F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)  # noqa: E731
    base = pool(images) if reference == "local" else torch.full_like(images, 0.5)
    return pool((images - base).pow(2).sum(1, keepdim=True))[:, 0]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item Pearson correlation of two ``(N, ...)`` tensors (over all other dimensions)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)).float()


@dataclass
class ChannelInversion:
    """What :func:`invert_channels` returns.

    Attributes:
        channels: the channel of each row.
        images: ``(K, 3, H, W)`` reconstructions from each channel alone.
        heat_maps: ``(K, H, W)`` where each channel fires on the image, in [0, 1].
        overlays: ``(K, 3, H, W)`` the heat maps over the image.
        activations: ``(K,)`` each channel's mean activation on the image.
        output: the inverter's :class:`~diffinv.inverters.InversionOutput`.
    """

    channels: list[int]
    images: torch.Tensor
    heat_maps: torch.Tensor
    overlays: torch.Tensor
    activations: torch.Tensor
    output: InversionOutput


def invert_channels(
    inverter: Inverter,
    image: torch.Tensor,
    layer: str,
    channels: Sequence[int],
    *,
    source: str = "image",
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> ChannelInversion:
    """Inverts ``image``'s features at ``layer`` once per channel, keeping only that channel.

    Args:
        inverter: any inverter of the registry, built for the target network.
        image: ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1].
        layer: a layer of the target whose output is a feature map.
        channels: the channels, one reconstruction each (inverted as one batch).

    Raises:
        ValueError: a channel index out of range (naming the layer's channel count), a layer that is
            not a feature map.
    """
    image = check_images(image[None] if image.ndim == 3 else image)[:1]
    target = inverter.target
    channels = list(channels)
    if not channels:
        raise ValueError("`channels` is empty; give at least one channel.")
    fs = FeatureSet.extract(target, image, layer, sources=[source])
    check_feature_map(fs.features, layer)
    check_channels(channels, fs.features.shape[1], layer)
    masked = torch.cat([keep_channels(fs.features, [c]) for c in channels])
    kept = dataclasses.replace(fs, features=masked, sources=[f"{source}:channel{c}" for c in channels])
    out = inverter.invert(kept, generator=generator, progress=progress)
    heat = heat_maps(fs.features, channels, tuple(image.shape[-2:]))
    return ChannelInversion(
        channels=channels,
        images=out.images,
        heat_maps=heat,
        overlays=overlay(image[0], heat),
        activations=fs.features[0, channels].float().mean(dim=(1, 2)),
        output=out,
    )
