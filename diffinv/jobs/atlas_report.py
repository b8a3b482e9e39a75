"""The atlas's outputs: means with bootstrap intervals per (layer, method), paired differences,
metrics against depth with interval bands, and the best / median / worst gallery.

Every mean is over images (a record's seeds averaged per image first) with a 95 % bootstrap
interval resampled per image (:mod:`diffinv.stats`). Metrics a record lacks (LPIPS without its
weights, the judge's and the true labels' metrics when they were not asked for) are left out.

Example:
    >>> rows = summarize_intervals(records, ["blocks.1", "blocks.6"], ["pixel", "dip"])
    >>> write_depth_bands(rows, "atlas_depth.png", layers=["blocks.1", "blocks.6"], methods=["pixel", "dip"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..io import atomic_path, load_image, save_figure, to_pil
from ..stats import bootstrap_ci, format_ci, paired_difference_ci

__all__ = [
    "ATLAS_METRICS",
    "paired_differences",
    "per_image",
    "summarize_intervals",
    "write_atlas_table",
    "write_depth_bands",
    "write_gallery",
]

# (record key, column title, digits); a column appears when some record has the metric.
ATLAS_METRICS = (
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 3),
    ("lpips", "LPIPS", 3),
    ("top1_agreement", "target agr.", 2),
    ("original_top1_accuracy", "target acc. (originals)", 2),
    ("top1_accuracy", "target acc. (recon.)", 2),
    ("judge_original_accuracy", "judge acc. (originals)", 2),
    ("judge_accuracy", "judge acc. (recon.)", 2),
    ("judge_agreement", "judge agr.", 2),
    ("judge_similarity", "judge feature cos.", 3),
    ("seconds", "s / image", 2),
)


def per_image(records: Sequence[Mapping], layer: str, method: str, metric: str) -> dict[str, float]:
    """``image -> value`` of one (layer, method): the mean over the image's seeds (records without the
    metric, or with ``None``, left out)."""
    values: dict[str, list[float]] = {}
    for r in records:
        if r.get("layer") == layer and r.get("method") == method and r.get(metric) is not None:
            values.setdefault(r["image"], []).append(float(r[metric]))
    return {image: sum(v) / len(v) for image, v in values.items()}


def summarize_intervals(
    records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str], *, seed: int = 0
) -> list[dict]:
    """One row per (layer, method) with records: ``n`` (images) and ``metric -> (mean, low, high)``
    for every metric of :data:`ATLAS_METRICS` that its records carry."""
    rows = []
    for layer in layers:
        for method in methods:
            group = [r for r in records if r.get("layer") == layer and r.get("method") == method]
            if not group:
                continue
            row = {
                "layer": layer,
                "method": method,
                "n": len({r["image"] for r in group}),
                "white_box": bool(group[0].get("white_box", True)),
            }
            for metric, _, _ in ATLAS_METRICS:
                values = per_image(group, layer, method, metric)
                if values:
                    row[metric] = bootstrap_ci(list(values.values()), seed=seed)
            rows.append(row)
    return rows


def paired_differences(
    records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str], *, metric: str = "psnr", seed: int = 0
) -> list[dict]:
    """Per layer and pair of methods ``(a, b)``: the mean of ``a - b`` over the images both have and its
    bootstrap interval (paired: the same images)."""
    out = []
    for layer in layers:
        for a, b in combinations(methods, 2):
            va, vb = per_image(records, layer, a, metric), per_image(records, layer, b, metric)
            common = sorted(set(va) & set(vb))
            if common:
                diff = paired_difference_ci([va[i] for i in common], [vb[i] for i in common], seed=seed)
                out.append({"layer": layer, "a": a, "b": b, "metric": metric, "n": len(common), "difference": diff})
    return out


def write_atlas_table(
    rows: Sequence[Mapping],
    paired: Sequence[Mapping],
    path,
    *,
    training: Sequence[Mapping] = (),
    notes: Sequence[str] = (),
) -> str:
    """Writes ``results.md``: the table with intervals, the paired differences, the decoders' training,
    and ``notes``; returns the text."""
    metrics = [m for m in ATLAS_METRICS if any(m[0] in row for row in rows)]
    head = ["layer", "method", "box", "images", *[title for _, title, _ in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["layer"], row["method"], "white" if row["white_box"] else "black", str(row["n"])]
        cells += [format_ci(*row[key], digits=digits) if key in row else "n/a" for key, _, digits in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nMean [95 % bootstrap interval] over the images (each image's seeds averaged first; "
    text += (
        "2000 resamples of the images, seeded). target agr. = the target classifies the reconstruction as "
        "the original; acc. = top-1 accuracy against the true labels; the judge is a second network the attack "
        "never saw; judge feature cos. = cosine of its penultimate features, original vs reconstruction.\n"
    )
    if paired:
        metric = paired[0]["metric"]
        text += (
            f"\n### Paired differences ({metric}, same images)\n\n"
            "| layer | methods | images | difference |\n|---|---|---|---|\n"
        )
        for p in paired:
            text += f"| {p['layer']} | {p['a']} − {p['b']} | {p['n']} | {format_ci(*p['difference'])} |\n"
    if training:
        text += (
            "\n### Decoders\n\n| layer | images (training + validation) | steps | validation PSNR | s |\n"
            "|---|---|---|---|---|\n"
        )
        for t in training:
            val = "n/a" if t.get("val_psnr") is None else f"{t['val_psnr']:.2f}"
            text += (
                f"| {t['layer']} | {t.get('train_images')} + {t.get('val_images')} | {t.get('steps')} | {val} "
                f"| {t.get('seconds', 0):.0f} |\n"
            )
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def _panels(rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """The four panels of the depth plot: PSNR, SSIM, the judge's top-1 (else the target's) and the
    judge's similarity (else LPIPS), each where some row has it."""

    def first(*choices):
        return next(((k, t) for k, t in choices if any(k in r for r in rows)), None)

    panels = [
        ("psnr", "PSNR (dB)"),
        ("ssim", "SSIM"),
        first(
            ("judge_accuracy", "judge top-1 accuracy"),
            ("judge_agreement", "judge top-1 agreement"),
            ("top1_accuracy", "target top-1 accuracy"),
            ("top1_agreement", "target top-1 agreement"),
        ),
        first(("judge_similarity", "judge feature cosine"), ("lpips", "LPIPS")),
    ]
    return [p for p in panels if p is not None]


def write_depth_bands(rows: Sequence[Mapping], path, *, layers: Sequence[str], methods: Sequence[str]) -> Path:
    """Metrics against layer depth, one line per method with its 95 % interval as a band (black-box dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    cols = 2 if len(panels) > 1 else 1
    grid_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(6.5 * cols, 3.8 * grid_rows), dpi=110, squeeze=False)
    n = max((r["n"] for r in rows), default=0)
    for ax, (metric, title) in zip(axes.flat, panels):
        for method in methods:
            points = [
                (layers.index(r["layer"]), r[metric], r["white_box"])
                for r in rows
                if r["method"] == method and metric in r and not math.isnan(r[metric][0])
            ]
            if not points:
                continue
            xs = [p[0] for p in points]
            (line,) = ax.plot(
                xs,
                [p[1][0] for p in points],
                marker="o",
                linestyle="-" if points[0][2] else "--",
                label=f"{method} ({'white' if points[0][2] else 'black'}-box)",
            )
            ax.fill_between(
                xs, [p[1][1] for p in points], [p[1][2] for p in points], color=line.get_color(), alpha=0.2
            )
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"leakage against depth (shallow → deep), mean and 95 % interval over {n} images", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def write_gallery(
    records: Sequence[Mapping],
    original: Callable[[str], torch.Tensor],
    reconstruction: Callable[[Mapping], Path],
    path,
    *,
    layers: Sequence[str],
    methods: Sequence[str],
    cell: int = 96,
    metric: str = "psnr",
) -> Path:
    """One PNG: a row per layer; for each method its best, median and worst image by ``metric`` (seed
    0's reconstruction, or the first seed's), each as original | reconstruction, titled with the value.

    Args:
        original: ``image name -> (3, H, W)`` original in [0, 1].
        reconstruction: ``record -> `` the reconstruction's PNG.
    """
    label_w, title_h = 90, 30
    picks = ("best", "median", "worst")
    width = label_w + len(methods) * len(picks) * 2 * cell
    gallery = Image.new("RGB", (width, title_h + len(layers) * (cell + 14)), "white")
    draw = ImageDraw.Draw(gallery)
    for m, method in enumerate(methods):
        for k, pick in enumerate(picks):
            x = label_w + (m * len(picks) + k) * 2 * cell
            draw.text((x + 4, 2), f"{method}: {pick}", fill="black")
            draw.text((x + 4, 15), "original | reconstruction", fill="gray")
    for i, layer in enumerate(layers):
        y = title_h + i * (cell + 14)
        draw.text((4, y + cell // 2 - 6), layer, fill="black")
        for m, method in enumerate(methods):
            group = [
                r
                for r in records
                if r.get("layer") == layer and r.get("method") == method and r.get(metric) is not None
            ]
            first_seed = min((r.get("seed", 0) for r in group), default=0)
            group = sorted((r for r in group if r.get("seed", 0) == first_seed), key=lambda r: -float(r[metric]))
            if not group:
                continue
            for k, record in enumerate((group[0], group[len(group) // 2], group[-1])):
                x = label_w + (m * len(picks) + k) * 2 * cell
                gallery.paste(to_pil(original(record["image"])).resize((cell, cell)), (x, y))
                file = reconstruction(record)
                if file.is_file():
                    gallery.paste(to_pil(load_image(file, (cell, cell))), (x + cell, y))
                unit = " dB" if metric == "psnr" else ""
                caption = f"{float(record[metric]):.1f}{unit}  {Path(record['image']).stem[:14]}"
                draw.text((x + 2, y + cell + 1), caption, fill="black")
    with atomic_path(path) as tmp:
        gallery.save(tmp, format="PNG")
    return Path(path)
