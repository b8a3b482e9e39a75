"""Reconstruction metrics, per image.

All images are float tensors in ``[0, 1]``, NCHW; every function returns one value per
image (a tensor of shape ``(N,)``), so callers can average over images and seeds.
PSNR and SSIM come from scikit-image (SSIM: gaussian window, sigma 1.5, data range 1,
population covariance — Wang et al.'s settings and the protocol of ``BENCHMARKS.md``);
LPIPS from the ``lpips`` package.

Example:
    >>> psnr(reconstruction, original)            # tensor([24.1, 19.8])
    >>> LPIPS().available                          # False unless AlexNet weights are cached
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from .targets import TargetNetwork

__all__ = [
    "MIN_IMAGE_SIZE",
    "psnr",
    "ssim",
    "LPIPS",
    "feature_residual",
    "label_hits",
    "reconstruction_scores",
    "top1_accuracy",
    "top1_agreement",
    "temporal_consistency",
]

#: The smallest image side that :func:`ssim` scores: its gaussian window (sigma 1.5, scikit-image's truncation at
#: 3.5 sigma) is ``2 * int(3.5 * 1.5 + 0.5) + 1 = 11`` pixels, and scikit-image refuses a smaller image ("win_size
#: exceeds image extent"). Every command that scores its images checks ``--size`` against it before any work.
MIN_IMAGE_SIZE = 11


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"reconstruction and reference must both be (N, C, H, W) with equal shapes, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )


@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1], per image."""
    _check_pair(x, y)
    return torch.tensor([peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(_hwc(x), _hwc(y))])


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity (gaussian window, sigma 1.5, data range 1), per image."""
    _check_pair(x, y)
    return torch.tensor(
        [
            structural_similarity(
                a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for a, b in zip(_hwc(x), _hwc(y))
        ],
        dtype=torch.float32,
    )


def _hwc(images: torch.Tensor):
    """NCHW tensor in [0, 1] -> list of HWC float64 arrays (what scikit-image expects)."""
    return list(images.detach().double().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())


def _alexnet_checkpoint() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


class LPIPS(nn.Module):
    """LPIPS distance (AlexNet backbone), only with the real backbone weights.

    The ``lpips`` package ships its calibrated linear heads, but the AlexNet backbone comes
    from torchvision's downloader. Offline, the backbone file must already be in the torch
    hub cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``); without it
    :attr:`available` is ``False`` and :meth:`forward` returns ``None`` — never a number from
    a random backbone.
    """

    def __init__(self):
        super().__init__()
        self.checkpoint = _alexnet_checkpoint()
        self.available = self.checkpoint.is_file()
        self.net = None
        if self.available:
            import lpips

            self.net = lpips.LPIPS(net="alex", pretrained=True, verbose=False).eval().requires_grad_(False)

    @property
    def reason(self) -> str:
        return "" if self.available else f"LPIPS unavailable: AlexNet weights not found at {self.checkpoint}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        _check_pair(x, y)
        if self.net is None:
            return None
        self.net.to(x.device)
        return self.net(x.float(), y.float(), normalize=True).flatten()


@torch.no_grad()
def feature_residual(
    target: TargetNetwork,
    x: torch.Tensor,
    features: torch.Tensor,
    layer: str | None = None,
    *,
    input_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``||f(x) - features|| / ||features||`` per image: did the inversion match? (``input_size``: the
    target resizes to it instead of its own, :meth:`TargetNetwork.preprocess`.)"""
    pred = target.feature(x, layer, input_size=input_size).float().flatten(1)
    ref = features.to(pred.device).float().flatten(1)
    return (pred - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def top1_agreement(target: TargetNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """1.0 where the classifier's top-1 on the reconstruction equals that on the original.

    Returns ``None`` when the target has no classifier head.
    """
    _check_pair(x, y)
    if not target.has_classifier:
        return None
    return (target.predict(x) == target.predict(y)).float()


def label_hits(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where ``predicted`` is the true label, 0.0 where not, NaN where the label is unknown (``-1``); on the CPU."""
    labels = labels.to(predicted.device)
    hit = (predicted == labels).float()
    return torch.where(labels >= 0, hit, torch.full_like(hit, float("nan"))).cpu()


@torch.no_grad()
def top1_accuracy(target: TargetNetwork, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """1.0 where the classifier's top-1 on ``x`` is the true label, NaN where the label is unknown (``-1``).

    Returns ``None`` without labels or when the target has no classifier head.
    """
    if labels is None or not target.has_classifier:
        return None
    _check_labels(labels, len(x))
    return label_hits(target.predict(x), labels)


def _check_labels(labels: torch.Tensor | None, count: int) -> None:
    if labels is not None and len(labels) != count:
        raise ValueError(f"`labels` has {len(labels)} entries for {count} images.")


@torch.no_grad()
def reconstruction_scores(
    target: TargetNetwork,
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    judge=None,
    lpips: LPIPS | None = None,
    feature_residual: torch.Tensor | None = None,
    originals_cache: dict | None = None,
) -> dict[str, torch.Tensor | None]:
    """Every per-image score of a batch of reconstructions: what a benchmark or audit record holds.

    Args:
        target: the attacked network (top-1 agreement, and accuracy with ``labels``).
        reconstructions, originals: ``(N, 3, H, W)`` in [0, 1].
        labels: true class per image, ``-1`` where unknown (:func:`diffinv.judge.labels_tensor`), or ``None``.
        judge: a :class:`diffinv.judge.Judge` (a network the attack never saw), or ``None``.
        lpips: an :class:`LPIPS` metric (its values are ``None`` without the real backbone), or ``None``.
        feature_residual: the inversion's own residual per image, passed through.
        originals_cache: a dict the caller keeps per batch of ``originals`` (the same images, the same
            target and judge): the target's and the judge's outputs on the originals are computed at the
            first call and read at the next (a job scores every method and layer against the same
            originals; the judge's pass on them is half its cost).

    Returns:
        ``psnr``, ``ssim``, ``lpips``, ``feature_residual``, ``top1_agreement``, ``top1_accuracy`` and
        ``original_top1_accuracy`` (the target on the reconstruction / original against the label) and,
        with a judge, ``judge_accuracy``, ``judge_original_accuracy``, ``judge_agreement`` and
        ``judge_similarity``: a tensor ``(N,)`` each (NaN where a label is unknown), or ``None`` where
        the score does not apply.
    """
    _check_pair(reconstructions, originals)
    _check_labels(labels, len(originals))
    cache = {} if originals_cache is None else originals_cache
    scores = {
        "psnr": psnr(reconstructions, originals),
        "ssim": ssim(reconstructions, originals),
        "lpips": lpips(reconstructions, originals) if lpips is not None else None,
        "feature_residual": feature_residual,
        "top1_agreement": None,
        "top1_accuracy": None,
        "original_top1_accuracy": None,
    }
    if target.has_classifier:
        predicted = target.predict(reconstructions)
        if "target_top1" not in cache:
            cache["target_top1"] = target.predict(originals)
        original = cache["target_top1"]
        scores["top1_agreement"] = (predicted == original).float()
        if labels is not None:
            scores.update(
                top1_accuracy=label_hits(predicted, labels), original_top1_accuracy=label_hits(original, labels)
            )
    if judge is not None:
        scores.update(judge.score(reconstructions, originals, labels, originals_cache=cache))
    return scores


@torch.no_grad()
def temporal_consistency(frames: torch.Tensor, pairs: Sequence[int] | None = None) -> float:
    """Mean absolute difference between consecutive frames ``(T, C, H, W)`` (lower = steadier).

    Args:
        frames: the clip.
        pairs: the frames ``t`` whose difference to frame ``t - 1`` counts (``None``: all, ``1..T-1``).
    """
    if frames.ndim != 4 or len(frames) < 2:
        raise ValueError(f"`frames` must be (T, C, H, W) with T >= 2, got shape {tuple(frames.shape)}.")
    idx = torch.arange(1, len(frames)) if pairs is None else torch.as_tensor(list(pairs), dtype=torch.long)
    if len(idx) == 0 or int(idx.min()) < 1 or int(idx.max()) >= len(frames):
        raise ValueError(f"`pairs` must be frame indices in 1..{len(frames) - 1}, got {list(idx.tolist())}.")
    return (frames[idx].float() - frames[idx - 1].float()).abs().mean().item()
