"""The summary of benchmark records: per (layer, method) each metric's mean over images with its 95 % bootstrap
interval (:func:`summarize`; each image the mean of its seeds, values that are not finite numbers left out and
counted), and the paired differences between methods on the same images (:func:`paired_differences`).

Example:
    >>> rows = summarize(records, layers=["blocks.1"], methods=["pixel", "dip"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..stats import bootstrap_ci, paired_difference_ci

__all__ = [
    "METRICS",
    "SEMANTIC_METRICS",
    "excluded_note",
    "finite_per_image",
    "paired_differences",
    "per_image",
    "summarize",
]


METRICS = ("psnr", "ssim", "lpips", "feature_residual", "top1_agreement", "seconds", "peak_memory_mb")
# scores against the true labels and of the judge (a network the attack never saw); absent from older records
SEMANTIC_METRICS = (
    "original_top1_accuracy",
    "top1_accuracy",
    "top1_agreement",
    "judge_original_accuracy",
    "judge_accuracy",
    "judge_agreement",
    "judge_similarity",
)
CONFIDENCE = 0.95

# the column titles of results.md, for the notes
_TITLES = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "lpips": "LPIPS",
    "feature_residual": "feat. residual",
    "top1_agreement": "top-1 agr.",
    "seconds": "s / image",
    "peak_memory_mb": "peak MiB",
    "original_top1_accuracy": "target acc. (originals)",
    "top1_accuracy": "target acc. (recon.)",
    "judge_original_accuracy": "judge acc. (originals)",
    "judge_accuracy": "judge acc. (recon.)",
    "judge_agreement": "judge agr.",
    "judge_similarity": "judge feature cos.",
}


def finite_per_image(records: Sequence[Mapping], metric: str) -> tuple[dict[str, float], int]:
    """``(image -> mean over the image's seeds of metric, values left out)``: records without the value are
    left out, and so are values that are not a finite number (NaN, infinite, a word), which are counted: an
    image whose values are all left out is not in the mean, nor in its n."""
    values: dict[str, list[float]] = {}
    excluded = 0
    for r in records:
        value = r.get(metric)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            excluded += 1
            continue
        values.setdefault(r["image"], []).append(number)
    return {image: sum(v) / len(v) for image, v in values.items()}, excluded


def per_image(records: Sequence[Mapping], metric: str) -> dict[str, float]:
    """``image -> value`` of ``metric``, the mean over the image's seeds (records without the value, or with
    one that is not a finite number, left out: :func:`finite_per_image`)."""
    return finite_per_image(records, metric)[0]


def excluded_note(rows: Sequence[Mapping]) -> str | None:
    """The note of :func:`summarize`'s rows whose values were left out as not finite numbers (``None``: none)."""
    parts = []
    for metric in dict.fromkeys(METRICS + SEMANTIC_METRICS):
        where = [(row, row["excluded"][metric]) for row in rows if row.get("excluded", {}).get(metric)]
        if where:
            total = sum(k for _, k in where)
            cells = ", ".join(
                f"{row['layer']} {row['method']}" + (f": {k}" if len(where) > 1 else "") for row, k in where
            )
            parts.append(f"{_TITLES.get(metric, metric)} {total} value{'s' if total > 1 else ''} ({cells})")
    if not parts:
        return None
    return (
        "Left out of the means and of their n, not a finite number (NaN, infinite or not a number): "
        + "; ".join(parts)
        + "."
    )


def summarize(records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """Per (layer, method): each metric's mean over images and its 95 % bootstrap interval.

    Each image counts once (its value is the mean over its seeds); the interval resamples images
    (:func:`~diffinv.stats.bootstrap_ci`, seeded). A row holds ``n`` (images), ``seeds``, and per
    metric ``(mean, low, high)`` or ``None`` where no record has the value; ``counts``: per metric the
    images in its mean; ``excluded``: per metric the values left out as not finite numbers (only those
    with some), which are in neither the mean nor its count.
    """
    rows = []
    for layer in layers:
        for method in methods:
            group = [r for r in records if r["layer"] == layer and r["method"] == method]
            if not group:
                continue
            row = {
                "layer": layer,
                "method": method,
                "n": len({r["image"] for r in group}),
                "seeds": len({r.get("seed", 0) for r in group}),
                "white_box": group[0].get("white_box", True),
                "hybrid": group[0].get("hybrid", False),
                "counts": {},
                "excluded": {},
            }
            for metric in dict.fromkeys(METRICS + SEMANTIC_METRICS):
                by_image, excluded = finite_per_image(group, metric)
                values = list(by_image.values())
                row[metric] = bootstrap_ci(values, confidence=CONFIDENCE) if values else None
                row["counts"][metric] = len(values)
                if excluded:
                    row["excluded"][metric] = excluded
            rows.append(row)
    return rows


def paired_differences(
    records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str], metric: str = "psnr"
) -> list[dict]:
    """Per layer, each method against the best one (highest mean ``metric``) and against ``pixel``, paired
    on the images both have: ``{"layer", "method", "n", "best", "vs_best", "vs_pixel", "n_best", "n_pixel"}``
    with each difference ``(mean, low, high)`` of method - other (``None`` for the method itself)."""
    rows = []
    for layer in layers:
        values = {
            m: per_image([r for r in records if r["layer"] == layer and r["method"] == m], metric) for m in methods
        }
        values = {m: v for m, v in values.items() if v}
        if len(values) < 2:
            continue
        best = max(values, key=lambda m: sum(values[m].values()) / len(values[m]))
        for method, mine in values.items():
            row = {"layer": layer, "method": method, "best": best, "n": len(mine)}
            for key, other in (("best", best), ("pixel", "pixel")):
                if other == method or other not in values:
                    row[f"vs_{key}"], row[f"n_{key}"] = None, 0
                    continue
                shared = [image for image in mine if image in values[other]]
                row[f"vs_{key}"] = paired_difference_ci(
                    [mine[i] for i in shared], [values[other][i] for i in shared], confidence=CONFIDENCE
                )
                row[f"n_{key}"] = len(shared)
            rows.append(row)
    return rows
