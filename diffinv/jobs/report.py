"""Tables, image grids and plots of benchmark records, and the loss curve of a training run.

Example:
    >>> write_table(records, "results.md", layers=["blocks.1"], methods=["pixel", "dip"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..io import atomic_path, load_image, save_figure, to_pil

__all__ = ["METRICS", "plot_loss_curve", "summarize", "write_depth_plot", "write_grid", "write_privacy_utility_plot",
           "write_table"]

METRICS = ("psnr", "ssim", "lpips", "feature_residual", "top1_agreement", "seconds", "peak_memory_mb")


def summarize(records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """Mean and std of each metric per (layer, method), over images and seeds."""
    rows = []
    for layer in layers:
        for method in methods:
            group = [r for r in records if r["layer"] == layer and r["method"] == method]
            if not group:
                continue
            row = {"layer": layer, "method": method, "n": len(group), "white_box": group[0].get("white_box", True),
                   "hybrid": group[0].get("hybrid", False)}
            for metric in METRICS:
                values = [r[metric] for r in group if r.get(metric) is not None]
                if values:
                    mean = sum(values) / len(values)
                    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
                    row[metric] = (mean, std)
                else:
                    row[metric] = None
            rows.append(row)
    return rows


def write_table(records, path, *, layers, methods, meta: Mapping | None = None) -> str:
    """Writes the mean ± std markdown table and returns it."""
    fmt = {"psnr": "{:.2f}", "ssim": "{:.3f}", "lpips": "{:.3f}", "feature_residual": "{:.3f}",
           "top1_agreement": "{:.2f}", "seconds": "{:.2f}", "peak_memory_mb": "{:.0f}"}
    head = ["layer", "method", "box", "n", "PSNR (dB)", "SSIM", "LPIPS", "feat. residual", "top-1 agr.", "s / image", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summarize(records, layers, methods):
        box = "hybrid" if row["hybrid"] else "white" if row["white_box"] else "black"
        cells = [row["layer"], row["method"], box, str(row["n"])]
        for metric in METRICS:
            value = row[metric]
            cells.append("n/a" if value is None else f"{fmt[metric].format(value[0])} ± {fmt[metric].format(value[1])}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if meta:
        where = f"device {meta.get('device')}"
        if meta.get("processes", 1) > 1:
            where += f", {meta['processes']} processes x {meta.get('threads')} threads (s / image is each process's time)"
        notes.append(f"Target `{meta.get('target')}`, images {meta.get('image_size')}, {where}.")
        if meta.get("lpips") != "alexnet":
            notes.append(str(meta.get("lpips")) + ".")
    if any(row.get("hybrid") for row in summarize(records, layers, methods)):
        notes.append("box hybrid = a black-box (or GAN) start refined white-box through the diffusion chain; its "
                     "s / image includes the start.")
    notes.append("Mean ± std over images and seeds; top-1 agr. = share of reconstructions the target classifies "
                 "as it classifies the original; peak MiB = GPU allocated or CPU resident set during the inversion.")
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


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
    """Mean ± std of ``metric`` against layer depth, one line per method (black-box dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(records, layers, methods)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in methods:
        points = [(layers.index(r["layer"]), r[metric], r["white_box"]) for r in rows
                  if r["method"] == method and r[metric] is not None]
        if not points:
            continue
        xs, stats, white = zip(*points)
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                    linestyle="-" if white[0] else "--", label=f"{method} ({'white' if white[0] else 'black'}-box)")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer (shallow → deep)")
    ax.set_ylabel({"psnr": "PSNR (dB)"}.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def write_privacy_utility_plot(rows: Sequence[Mapping], path, *, layers: Sequence[str], methods: Sequence[str]) -> Path:
    """The privacy–utility curve of an audit: one column per layer; attack PSNR (top) and attack top-1
    agreement (bottom) against the deployment's utility, one curve per method (adaptive attacker
    solid, naive dashed), each point labelled with its defense setting.

    ``rows``: the ``settings`` of an audit report (``layer``, ``defense``, ``utility``,
    ``attacks[method][attacker][metric]``). Settings without utility are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(layers), figsize=(5 * len(layers), 7), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, layer in enumerate(layers):
        mine = [r for r in rows if r["layer"] == layer and r.get("utility") is not None]
        for row_index, (metric, label) in enumerate((("psnr", "attack PSNR (dB)"), ("top1_agreement", "attack top-1 agr."))):
            ax = axes[row_index][col]
            for k, method in enumerate(methods):
                for attacker, style in (("adaptive", "-"), ("naive", "--")):
                    points = [(r["utility"], (r["attacks"].get(method) or {}).get(attacker) or {}, r["defense"])
                              for r in mine]
                    points = sorted((p for p in points if p[1].get(metric) is not None), key=lambda p: p[0])
                    if not points:
                        continue
                    xs = [p[0] for p in points]
                    ys = [p[1][metric] for p in points]
                    ax.plot(xs, ys, style, marker="o" if attacker == "adaptive" else "x", color=colors[k % len(colors)],
                            label=f"{method} {attacker}")
                    if attacker == "adaptive" or method == methods[0]:
                        for x, y, (_, _, spec) in zip(xs, ys, points):
                            ax.annotate(spec, (x, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
            ax.set_xlabel("utility (top-1 agreement of the defended deployment)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row_index == 0:
                ax.set_title(layer)
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


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
        ax2.plot([v["step"] for v in validation], [v["psnr"] for v in validation], "o-", color="tab:red",
                 label="validation PSNR")
        ax2.set_ylabel("validation PSNR (dB)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, Path(path))
