"""Tables, image grids and plots of benchmark records, and the loss curve of a training run.

Example:
    >>> write_table(records, "results.md", layers=["blocks.1"], methods=["pixel", "dip"])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..io import atomic_path, load_image, save_figure, to_pil
from ..stats import bootstrap_ci, format_ci, paired_difference_ci

__all__ = [
    "METRICS",
    "SEMANTIC_METRICS",
    "excluded_note",
    "finite_per_image",
    "paired_differences",
    "per_image",
    "plot_loss_curve",
    "summarize",
    "write_depth_plot",
    "write_grid",
    "write_privacy_utility_plot",
    "write_table",
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
_FORMAT = {
    "psnr": 2,
    "ssim": 3,
    "lpips": 3,
    "feature_residual": 3,
    "top1_agreement": 2,
    "seconds": 2,
    "peak_memory_mb": 0,
    "original_top1_accuracy": 2,
    "top1_accuracy": 2,
    "judge_original_accuracy": 2,
    "judge_accuracy": 2,
    "judge_agreement": 2,
    "judge_similarity": 3,
}


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


def _cell(value, metric: str, row: Mapping | None = None) -> str:
    """A mean and its interval; ``(n = K)`` after it where values of the row were left out as not finite."""
    text = "n/a" if value is None else format_ci(*value, digits=_FORMAT.get(metric, 2))
    if row is not None and row.get("excluded", {}).get(metric):
        text += f" (n = {row['counts'][metric]})"
    return text


def write_table(
    records, path, *, layers, methods, meta: Mapping | None = None, record_notes: Sequence[str] = ()
) -> str:
    """Writes ``results.md`` and returns it: per (layer, method) the mean and 95 % bootstrap interval over
    images of every metric (n = images); the accuracy against true labels and the judge's scores when the
    records have them; each method minus the layer's best and minus pixel, paired on the same images.

    Values that are not finite numbers are left out of the means and their n (the cell then shows its n), said
    in a note and a warning; ``record_notes``: more about the records (e.g. what
    :func:`~diffinv.jobs.items.merge_records` left out), written under the tables."""
    rows = summarize(records, layers, methods)
    lines = _metrics_table(rows) + _semantic_table(rows, records, meta) + _paired_tables(records, layers, methods)
    notes = _table_notes(rows, meta)
    excluded = excluded_note(rows)
    if excluded:
        warnings.warn(f"{str(path)!r}: {excluded}", stacklevel=2)
    said = [note for note in (excluded, *record_notes) if note]
    if said:
        notes += ["", "Records: " + " ".join(said)]
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def _metrics_table(rows: Sequence[Mapping]) -> list[str]:
    """``results.md``'s first table: per (layer, method) every metric's mean and interval."""
    seeds = max((row["seeds"] for row in rows), default=1)
    per = "n = images" + (f" (each the mean of its {seeds} seeds)" if seeds > 1 else "")
    head = [
        "layer",
        "method",
        "box",
        "n",
        "PSNR (dB)",
        "SSIM",
        "LPIPS",
        "feat. residual",
        "top-1 agr.",
        "s / image",
        "peak MiB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        box = "hybrid" if row["hybrid"] else "white" if row["white_box"] else "black"
        cells = [row["layer"], row["method"], box, str(row["n"])] + [_cell(row[m], m, row) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"Mean [95 % bootstrap interval over images]; {per}."]


def _semantic_table(rows: Sequence[Mapping], records, meta: Mapping | None) -> list[str]:
    """The table of the accuracy against true labels and the judge's scores (none when no record has them)."""
    semantic = [m for m in SEMANTIC_METRICS if m != "top1_agreement" and any(row[m] is not None for row in rows)]
    if not semantic:
        return []
    titles = {
        "original_top1_accuracy": "target acc. (originals)",
        "top1_accuracy": "target acc. (recon.)",
        "top1_agreement": "target agr.",
        "judge_original_accuracy": "judge acc. (originals)",
        "judge_accuracy": "judge acc. (recon.)",
        "judge_agreement": "judge agr.",
        "judge_similarity": "judge feature cos.",
    }
    shown = [m for m in SEMANTIC_METRICS if m in semantic or m == "top1_agreement"]
    judge = (meta or {}).get("judge")
    lines = [
        "",
        "## What the reconstructions reveal: true labels" + (f" and the judge `{judge}`" if judge else ""),
        "",
        "| " + " | ".join(["layer", "method", "n", *(titles[m] for m in shown)]) + " |",
        "|" + "---|" * (3 + len(shown)),
    ]
    for row in rows:
        group = [r for r in records if r["layer"] == row["layer"] and r["method"] == row["method"]]
        labelled = len({r["image"] for r in group if r.get("label") is not None})
        n = str(row["n"]) + (f" ({labelled} labelled)" if labelled < row["n"] else "")
        lines.append(
            "| " + " | ".join([row["layer"], row["method"], n, *(_cell(row[m], m, row) for m in shown)]) + " |"
        )
    note = (
        "acc. = share of images whose top-1 class is the true label (over the labelled images); agr. = share "
        "of reconstructions classified as the original."
    )
    if any(m.startswith("judge") for m in semantic):
        note += (
            " judge feature cos. = cosine similarity of the judge's penultimate (pooled) features of "
            "reconstruction and original. The judge is a second network that the attack never saw: a "
            "reconstruction that only fools the target scores low there."
        )
    return lines + ["", note]


def _paired_tables(records, layers, methods) -> list[str]:
    """The paired differences of PSNR and of the judge's similarity: each method minus the layer's best and
    minus pixel."""
    lines: list[str] = []
    for metric, title in (("psnr", "PSNR (dB)"), ("judge_similarity", "judge feature cos.")):
        diffs = paired_differences(records, layers, methods, metric)
        if not diffs:
            continue
        digits = _FORMAT[metric]
        lines += [
            "",
            f"## Paired differences of {title}: each method minus the layer's best and minus pixel",
            "",
            "| layer | method | n | minus best | minus pixel |",
            "|---|---|---|---|---|",
        ]
        for d in diffs:
            best = "(best)" if d["vs_best"] is None else f"{format_ci(*d['vs_best'], digits=digits)} ({d['best']})"
            pixel = "—" if d["vs_pixel"] is None else format_ci(*d["vs_pixel"], digits=digits)
            lines.append(f"| {d['layer']} | {d['method']} | {d['n']} | {best} | {pixel} |")
        lines += [
            "",
            "Mean difference per image [95 % bootstrap interval, images resampled as pairs]; an interval "
            "that excludes 0 separates the two methods on these images.",
        ]
    return lines


def _table_notes(rows: Sequence[Mapping], meta: Mapping | None) -> list[str]:
    """The notes under the tables: where they ran, what hybrid and top-1 agreement mean."""
    notes = []
    if meta:
        where = f"device {meta.get('device')}"
        if meta.get("processes", 1) > 1:
            where += (
                f", {meta['processes']} processes x {meta.get('threads')} threads (s / image is each process's time)"
            )
        notes.append(f"Target `{meta.get('target')}`, images {meta.get('image_size')}, {where}.")
        if meta.get("lpips") != "alexnet":
            notes.append(str(meta.get("lpips")) + ".")
    if any(row.get("hybrid") for row in rows):
        notes.append(
            "box hybrid = another method's estimate (START+...) refined white-box, by the diffusion chain "
            "or pixel optimization; its s / image includes the start."
        )
    notes.append(
        "top-1 agr. = share of reconstructions the target classifies as it classifies the original; peak "
        "MiB = GPU allocated or CPU resident set during the inversion."
    )
    return notes


def write_grid(images, layers, methods, image_file, path, *, index: int = 0) -> Path:
    """Rows = layers, columns = original + methods, for image ``index``.

    ``image_file(layer, method)`` names the reconstruction's PNG (skipped when missing).
    """
    path = Path(path)
    h, w = images.shape[-2:]
    label_w, label_h = 110, 18
    grid = Image.new("RGB", (label_w + w * (1 + len(methods)), label_h + h * len(layers)), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(["original", *methods]):
        draw.text((label_w + j * w + 4, 3), title, fill="black")
    for i, layer in enumerate(layers):
        y = label_h + i * h
        draw.text((4, y + h // 2 - 6), layer, fill="black")
        grid.paste(to_pil(images[index]), (label_w, y))
        for j, method in enumerate(methods):
            file = image_file(layer, method)
            if file.is_file():
                grid.paste(to_pil(load_image(file, (h, w), max_pixels=h * w)), (label_w + (j + 1) * w, y))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def write_depth_plot(records, path, *, layers, methods, metric: str = "psnr") -> Path:
    """Mean of ``metric`` over images against layer depth with its 95 % bootstrap interval (error bars and a
    band), one line per method (black-box dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(records, layers, methods)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in methods:
        points = [
            (layers.index(r["layer"]), r[metric], r["white_box"])
            for r in rows
            if r["method"] == method and r[metric] is not None
        ]
        if not points:
            continue
        xs, stats, white = zip(*points)
        means, lows, highs = ([s[k] for s in stats] for k in range(3))
        errors = [[m - lo for m, lo in zip(means, lows)], [h - m for m, h in zip(means, highs)]]
        line = ax.errorbar(
            xs,
            means,
            yerr=errors,
            marker="o",
            capsize=3,
            linestyle="-" if white[0] else "--",
            label=f"{method} ({'white' if white[0] else 'black'}-box)",
        )
        ax.fill_between(xs, lows, highs, alpha=0.15, color=line[0].get_color(), linewidth=0)
    n = max((r["n"] for r in rows), default=0)
    ax.set_title(f"mean and 95 % bootstrap interval over n = {n} images", fontsize=9)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer (shallow → deep)")
    ax.set_ylabel(
        {
            "psnr": "PSNR (dB)",
            "ssim": "SSIM",
            "judge_accuracy": "judge top-1 accuracy",
            "judge_similarity": "judge feature cosine",
        }.get(metric, metric)
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def write_privacy_utility_plot(
    rows: Sequence[Mapping], path, *, layers: Sequence[str], methods: Sequence[str], frontier: Mapping | None = None
) -> Path:
    """The privacy–utility curve of an audit: one column per layer; attack PSNR (top) and attack top-1
    agreement (bottom) against the deployment's utility, one curve per method (adaptive attacker
    solid, naive dashed), each point labelled with its defense setting.

    ``rows``: the ``settings`` of an audit report (``layer``, ``defense``, ``utility``,
    ``attacks[method][attacker][metric]``). Settings without utility are left out. ``frontier``: the report's
    frontier section: a third row, the best attack's leak against utility for every setting (learned ones
    marked), its Pareto frontier drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 + (frontier is not None),
        len(layers),
        figsize=(5 * len(layers), 7 + 3.5 * (frontier is not None)),
        dpi=110,
        squeeze=False,
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, layer in enumerate(layers):
        mine = [r for r in rows if r["layer"] == layer and r.get("utility") is not None]
        for row_index, (metric, label) in enumerate(
            (("psnr", "attack PSNR (dB)"), ("top1_agreement", "attack top-1 agr."))
        ):
            ax = axes[row_index][col]
            for k, method in enumerate(methods):
                for attacker, style in (("adaptive", "-"), ("naive", "--")):
                    points = [
                        (r["utility"], (r["attacks"].get(method) or {}).get(attacker) or {}, r["defense"])
                        for r in mine
                    ]
                    points = sorted((p for p in points if p[1].get(metric) is not None), key=lambda p: p[0])
                    if not points:
                        continue
                    xs = [p[0] for p in points]
                    ys = [p[1][metric] for p in points]
                    ax.plot(
                        xs,
                        ys,
                        style,
                        marker="o" if attacker == "adaptive" else "x",
                        color=colors[k % len(colors)],
                        label=f"{method} {attacker}",
                    )
                    if attacker == "adaptive" or method == methods[0]:
                        for x, y, (_, _, spec) in zip(xs, ys, points):
                            ax.annotate(spec, (x, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("utility (top-1 agreement of the defended deployment)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row_index == 0:
                ax.set_title(layer)
        axes[0][col].legend(fontsize=7)
        if frontier is not None:
            _frontier_axis(axes[2][col], mine, frontier, layer)
    fig.tight_layout()
    return save_figure(fig, path)


def _frontier_axis(ax, rows: Sequence[Mapping], frontier: Mapping, layer: str) -> None:
    """The frontier row of the privacy-utility plot: leak against utility, learned settings as squares."""
    points = [r for r in rows if r.get("leak") is not None]
    pareto = set(frontier["layers"].get(layer, {}).get("pareto", ()))
    for r in points:
        learned = r["defense"] in frontier["learned"]
        ax.plot(r["utility"], r["leak"], "s" if learned else "o", color="tab:red" if learned else "tab:blue")
        ax.annotate(
            r["defense"], (r["utility"], r["leak"]), fontsize=6, alpha=0.8, xytext=(2, 2), textcoords="offset points"
        )
    line = sorted((r["utility"], r["leak"]) for r in points if r["defense"] in pareto)
    if line:
        ax.plot(*zip(*line), "-", color="k", alpha=0.5, label="Pareto frontier")
        ax.legend(fontsize=7)
    ax.set_xlabel(f"utility (top-1 {frontier['utility']} of the defended deployment)")
    ax.set_ylabel(f"best attack's {frontier['leak_metric'].replace('_', ' ')}")
    ax.grid(alpha=0.3)


def plot_loss_curve(losses: Sequence[float], validation: Sequence[Mapping], path, title: str = "") -> Path:
    """Training loss (raw and smoothed, log scale) and validation PSNR per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    values = np.asarray(losses, dtype=float)
    if len(values):
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss")
        smooth, ema = [], values[0]
        for v in values:
            ema = 0.95 * ema + 0.05 * v if np.isfinite(v) else ema
            smooth.append(ema)
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.5, label="train loss (EMA)")
        if (values[np.isfinite(values)] > 0).all():
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if validation:
        ax2 = ax.twinx()
        ax2.plot(
            [v["step"] for v in validation],
            [v["psnr"] for v in validation],
            "o-",
            color="tab:red",
            label="validation PSNR",
        )
        ax2.set_ylabel("validation PSNR (dB)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, Path(path))
