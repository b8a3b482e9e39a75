"""Bootstrap confidence intervals over images (a minimal stand-in with the agreed API; the full
module, with the judge's helpers, is written in another branch and replaces this one at merge).

Example:
    >>> mean, low, high = bootstrap_ci([12.1, 14.0, 13.2, 15.8])
    >>> format_ci(mean, low, high)
    '13.78 [12.63, 14.98]'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "format_ci", "paired_difference_ci"]


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval (images
    resampled with replacement, seeded). One value: the interval is the value itself; none: NaNs."""
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"`resamples` must be a positive integer, got {resamples!r}.")
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                         resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``a[i] - b[i]`` over paired images (the same images, two methods)."""
    if len(a) != len(b):
        raise ValueError(f"paired values must have the same length, got {len(a)} and {len(b)}.")
    return bootstrap_ci([float(x) - float(y) for x, y in zip(a, b)], confidence=confidence, resamples=resamples,
                        seed=seed)


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"13.78 [12.63, 14.98]"``; ``"n/a"`` for a NaN mean."""
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
