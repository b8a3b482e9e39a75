"""Confidence intervals over images: the percentile bootstrap, paired differences, and how they are printed.

Every mean that diffinv prints is a mean over images; its interval comes from resampling the images with
replacement (a seeded generator, so a table is reproducible). Two methods run on the same images are compared
*paired*: the interval of the mean per-image difference. ``None`` and NaN values (a metric that does not apply to
an image) are left out; a single value gives a zero-width interval.

Example:
    >>> bootstrap_ci([21.0, 22.5, 20.1, 23.2])
    (21.7, 20.55, 22.85)
    >>> format_ci(*bootstrap_ci([21.0, 22.5, 20.1, 23.2]))
    '21.70 [20.55, 22.85]'
    >>> paired_difference_ci(dip_psnr, pixel_psnr)          # same images, same order
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "format_ci", "paired_difference_ci"]


def _finite(values: Iterable) -> np.ndarray:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return np.asarray(kept, dtype=np.float64)


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), e.g. 0.95, got {confidence!r}.")
    if int(resamples) < 1:
        raise ValueError(f"`resamples` must be a positive integer, got {resamples!r}.")


def _percentile_bootstrap(
    values: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[float, float, float]:
    mean = float(values.mean())
    if len(values) == 1 or np.all(values == values[0]):
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(int(resamples), len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(min(low, mean)), float(max(high, mean))


def bootstrap_ci(
    values: Iterable[float | None], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile-bootstrap interval, resampling the values (images).

    Args:
        values: one value per image; ``None`` and NaN are left out.
        confidence: the interval's coverage (0.95: the 2.5 and 97.5 percentiles of the resampled means).
        resamples: bootstrap resamples.
        seed: the resampling generator's seed (the same values give the same interval).

    Returns:
        ``(mean, low, high)``; ``(nan, nan, nan)`` when no value is left, ``(v, v, v)`` for a single
        value (or all equal values).

    Raises:
        ValueError: ``confidence`` outside (0, 1) or ``resamples`` < 1.
    """
    _check(confidence, resamples)
    kept = _finite(values)
    if not len(kept):
        return math.nan, math.nan, math.nan
    return _percentile_bootstrap(kept, confidence, resamples, seed)


def paired_difference_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The mean of ``a - b`` over paired images and its bootstrap interval (images resampled as pairs).

    Args:
        a, b: one value per image each, in the same image order; pairs where either is ``None``/NaN
            are left out.
        confidence, resamples, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(mean difference, low, high)``; an interval that excludes 0 says ``a`` and ``b`` differ on
        these images at that confidence.

    Raises:
        ValueError: ``a`` and ``b`` have different lengths, or bad ``confidence``/``resamples``.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must hold one value per image each (paired), got {len(a)} and {len(b)} values.")
    differences = [None if x is None or y is None else float(x) - float(y) for x, y in zip(a, b)]
    return bootstrap_ci(differences, confidence=confidence, resamples=resamples, seed=seed)


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"21.47 [20.90, 22.01]"``; ``"n/a"`` when the mean is NaN or None."""
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
