"""The figures of the jobs: the image grid of reconstructions, the metric against depth of a benchmark, the
privacy-utility curve of an audit, and the loss curve of a training run (PNG files, written atomically).

Example:
    >>> write_depth_plot(records, "psnr_vs_depth.png", layers=["blocks.1", "blocks.6"], methods=["pixel", "dip"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..io import atomic_path, load_image, save_figure, to_pil
from .summary import summarize

__all__ = ["plot_loss_curve", "write_depth_plot", "write_grid", "write_privacy_utility_plot"]


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
            _attack_axis(ax, mine, methods, metric, label, colors)
            if row_index == 0:
                ax.set_title(layer)
        axes[0][col].legend(fontsize=7)
        if frontier is not None:
            _frontier_axis(axes[2][col], mine, frontier, layer)
    fig.tight_layout()
    return save_figure(fig, path)


def _attack_axis(ax, rows: Sequence[Mapping], methods: Sequence[str], metric: str, label: str, colors) -> None:
    """An attack row of the privacy-utility plot: ``metric`` against utility, one curve per method and attacker
    (adaptive solid, naive dashed), each point labelled with its defense setting."""
    for k, method in enumerate(methods):
        for attacker, style in (("adaptive", "-"), ("naive", "--")):
            points = [(r["utility"], (r["attacks"].get(method) or {}).get(attacker) or {}, r["defense"]) for r in rows]
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
