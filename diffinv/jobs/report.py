"""``results.md``, the tables of benchmark records: per (layer, method) every metric's mean and 95 % bootstrap
interval, the accuracy against true labels and the judge's scores, and the paired differences between methods.
The summaries (:mod:`diffinv.jobs.summary`) and figures (:mod:`diffinv.jobs.figures`) are re-exported here.

Example:
    >>> write_table(records, "results.md", layers=["blocks.1"], methods=["pixel", "dip"])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from ..io import atomic_path
from ..stats import format_ci
from .figures import plot_loss_curve, write_depth_plot, write_grid, write_privacy_utility_plot
from .summary import (
    METRICS,
    SEMANTIC_METRICS,
    excluded_note,
    finite_per_image,
    paired_differences,
    per_image,
    summarize,
)

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
