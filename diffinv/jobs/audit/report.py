"""The audit's report: ``report.json``'s summary of the records (:func:`build_report`: the settings' rows, the
recommendation per layer, the cost, the frontier) and ``report.md``'s tables (:func:`write_report_md`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...io import atomic_path
from ...stats import format_ci
from ..summary import SEMANTIC_METRICS
from .frontier import frontier_report
from .items import ATTACKERS, DEFENSE
from .summary import METRICS, UTILITY_THRESHOLD, recommendations, setting_row

__all__ = ["build_report", "write_report_md"]


def _finite_or_zero(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def build_report(
    records: Sequence[Mapping],
    layers: Sequence[str],
    specs: Sequence[str],
    methods: Sequence[str],
    adaptive: Sequence[str] = (),
    meta: Mapping | None = None,
    frontier: Mapping | None = None,
) -> dict:
    """The audit's summary of ``records``: per (layer, defense setting) the utility and, per method and
    attacker, the mean metrics; per layer the setting that keeps utility >= 0.9 with the lowest best
    attack PSNR; the cost in seconds. ``adaptive``: the methods that have an adaptive attacker (the others
    say why not).

    Every mean is over images (each the mean of its seeds), with its 95 % bootstrap interval over images
    beside it (``METRIC_ci``: ``[low, high]``); ``n`` counts the images. Values that are not finite numbers are
    left out of the mean (``METRIC_n``: the images in it) and said in ``notes``.

    ``frontier`` (``{"learned": [spec, ...], "baseline": [spec, ...], "utility": "accuracy" | "agreement"}``, given
    for an audit with learned settings or utility on true labels): each row also gets its ``accuracy`` and
    ``agreement`` and its *leak*, the best attack's judge accuracy (:func:`frontier_report`), and the report a
    ``frontier`` section."""
    left_out: dict[str, list[str]] = {}  # metric -> where values were left out
    rows = [setting_row(records, layer, spec, methods, adaptive, left_out) for layer in layers for spec in specs]

    def seconds(kind):  # a value that is not a finite number counts 0
        return sum(_finite_or_zero(r.get("seconds")) for r in records if r["kind"] == kind)

    cost = {
        "attack_seconds": seconds("attack"),
        "utility_seconds": seconds("utility"),
        "decoder_training_seconds": seconds("training"),
    }
    notes = []
    if left_out:
        notes.append(
            "Left out of the means, not a finite number (NaN, infinite or not a number): "
            + "; ".join(f"{metric} ({', '.join(dict.fromkeys(where))})" for metric, where in left_out.items())
            + "."
        )
    report = {
        "meta": dict(meta or {}),
        "utility_threshold": UTILITY_THRESHOLD,
        "settings": rows,
        "recommendation": recommendations(rows, layers),
        "cost_seconds": cost,
        "notes": notes,
    }
    if frontier is not None:
        cost["defense_training_seconds"] = sum(
            _finite_or_zero(r.get("seconds"))
            for r in records
            if r["kind"] == "training" and r.get("method") == DEFENSE
        )
        cost["decoder_training_seconds"] -= cost["defense_training_seconds"]
        report["frontier"] = frontier_report(records, rows, layers, frontier)
    return report


def write_report_md(report: Mapping, path) -> str:
    """``report.md``: one table per layer (defense x method: utility, naive / adaptive PSNR, SSIM, top-1), each
    mean with its 95 % bootstrap interval over images and the number of images; the accuracy against true labels
    and the judge's scores when the records have them."""
    lines = ["# Privacy audit", ""]
    meta = report.get("meta", {})
    if meta:
        lines += [
            f"Target `{meta.get('target')}`, {meta.get('images')} images at {meta.get('image_size')}, seeds "
            f"{meta.get('seeds')}, device {meta.get('device')}. Utility = top-1 agreement of the network run "
            f"from "
            f"the defended features with the undefended network; attack top-1 = agreement of the "
            f"reconstruction's class. naive / adaptive = attacker unaware of / aware of the defense. "
            f"Each value: mean [95 % bootstrap interval over images]; n = images (each the mean of its seeds).",
            "",
        ]
        if meta.get("lpips") != "alexnet":
            lines += [f"{meta.get('lpips')}.", ""]
    semantic = [
        m
        for m in METRICS
        if m in SEMANTIC_METRICS
        and m != "top1_agreement"
        and any(
            (a or {}).get(m) is not None
            for row in report["settings"]
            for e in row["attacks"].values()
            for k, a in e.items()
            if k in ATTACKERS
        )
    ]
    for layer in dict.fromkeys(r["layer"] for r in report["settings"]):
        rows = [r for r in report["settings"] if r["layer"] == layer]
        lines += _layer_table(layer, rows)
        if semantic:
            lines += _semantic_table(rows, semantic, meta.get("judge"))
        lines += ["", _recommendation(report["recommendation"].get(layer), report["utility_threshold"]), ""]
        if "frontier" in report:
            lines += _frontier_tables(layer, rows, report["frontier"])
    cost = report["cost_seconds"]
    defense_cost = (
        f", {cost['defense_training_seconds']:.0f} s of defense training" if "defense_training_seconds" in cost else ""
    )
    lines.append(
        f"Cost: {cost['attack_seconds']:.0f} s of attacks, {cost['utility_seconds']:.1f} s of utility, "
        f"{cost['decoder_training_seconds']:.0f} s of decoder training{defense_cost}."
    )
    if report.get("notes"):
        lines += ["", "Records: " + " ".join(report["notes"])]
    text = "\n".join(lines) + "\n"
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def _frontier_tables(layer: str, rows: Sequence[Mapping], frontier: Mapping) -> list[str]:
    """A layer's utility (accuracy, agreement), frontier, verdict and learned-versus-noise tables."""
    mine = frontier["layers"].get(layer, {})
    leak = {
        "judge_accuracy": "the judge's accuracy",
        "top1_accuracy": "the target's accuracy",
        "top1_agreement": "the target's top-1 agreement",
    }[frontier["leak_metric"]]
    lines = [
        f"### {layer}: privacy-utility frontier",
        "",
        f"Utility = the defended deployment's top-1 {frontier['utility']}"
        + (
            " on the true labels (agreement with the undefended network beside it)"
            if frontier["utility"] == "accuracy"
            else " with the undefended network"
        )
        + f"; leak = the best attack's reconstructions scored by {leak}. * = on the Pareto frontier.",
        "",
        "| defense | utility accuracy | utility agreement | leak | best attack |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " *" if row["defense"] in mine.get("pareto", ()) else ""
        lines.append(
            f"| {row['defense']}{mark} | {_fmt(row, 'accuracy')} | {_fmt(row, 'agreement')} | "
            f"{_fmt(row, 'leak')} | {row.get('leak_attack') or 'n/a'} |"
        )
    lines += [
        "",
        "Verdict: the setting that leaves the strongest attack the least, for a utility loss of at most:",
        "",
        "| utility loss | defense | utility | leak | best attack |",
        "|---|---|---|---|---|",
    ]
    for v in mine.get("verdict", ()):
        lines.append(
            f"| {100 * v['max_loss']:.0f} points | {v['defense'] or 'n/a'} | {_fmt(v, 'utility')} | "
            f"{_fmt(v, 'leak')} | {v.get('leak_attack') or 'n/a'} |"
        )
    if mine.get("versus_baseline"):
        lines += _versus_table(mine)
    return lines + [""]


def _versus_table(mine: Mapping) -> list[str]:
    """A layer's learned settings against plain noise, paired on the same images, and whether one beats it."""
    lines = [
        "",
        "Learned defenses against plain noise, paired on the same images (learned minus noise):",
        "",
        "| learned | noise | n | leak difference | utility difference | beats noise |",
        "|---|---|---|---|---|---|",
    ]
    for v in mine["versus_baseline"]:
        lines.append(
            f"| {v['learned']} | {v['baseline']} | {v['n']} | {_fmt(v, 'leak_difference')} | "
            f"{_fmt(v, 'utility_difference')} | {'yes' if v['beats'] else 'no'} |"
        )
    return lines + [
        "",
        "A learned defense beats plain noise at this layer: "
        + (
            "**yes**."
            if mine["learned_beats_baseline"]
            else "no (no lower leak with an interval below 0 at no lower utility)."
        ),
    ]


def _fmt(summary, key, digits=2) -> str:
    """A mean with its interval (and its n where values were left out), or ``n/a``."""
    value = (summary or {}).get(key)
    if value is None:
        return "n/a"
    low, high = summary.get(f"{key}_ci") or [value, value]
    counted = summary.get(f"{key}_n")  # only where values were left out as not finite
    return format_ci(value, low, high, digits) + ("" if counted is None else f" (n = {counted})")


def _layer_table(layer: str, rows: Sequence[Mapping]) -> list[str]:
    """A layer's table: per defense setting and method, utility and both attackers' PSNR, SSIM and top-1."""
    lines = [
        f"## {layer}",
        "",
        "| defense | utility | method | n | PSNR naive | PSNR adaptive | SSIM naive | "
        "SSIM adaptive | top-1 naive | top-1 adaptive | s / image (adaptive) |",
        "|" + "---|" * 11,
    ]
    for row in rows:
        for method, entry in row["attacks"].items():
            n, a = entry.get("naive") or {}, entry.get("adaptive") or {}
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["defense"],
                        _fmt(row, "utility"),
                        method,
                        str(n.get("n", a.get("n", 0))),
                        _fmt(n, "psnr"),
                        _fmt(a, "psnr"),
                        _fmt(n, "ssim", 3),
                        _fmt(a, "ssim", 3),
                        _fmt(n, "top1_agreement"),
                        _fmt(a, "top1_agreement"),
                        _fmt(a if a.get("seconds") is not None else n, "seconds"),
                    ]
                )
                + " |"
            )
        if row["utility_reason"]:
            lines.append(f"| {row['defense']} | n/a: {row['utility_reason']} |" + " |" * 9)
    return lines


def _semantic_table(rows: Sequence[Mapping], semantic: Sequence[str], judge: str | None) -> list[str]:
    """A layer's table of the accuracy against true labels and the judge's scores."""
    titles = {
        "original_top1_accuracy": "target acc. (originals)",
        "top1_accuracy": "target acc. (recon.)",
        "judge_original_accuracy": "judge acc. (originals)",
        "judge_accuracy": "judge acc. (recon.)",
        "judge_agreement": "judge agr.",
        "judge_similarity": "judge feature cos.",
    }
    lines = [
        "",
        "True labels" + (f" and the judge `{judge}` (a network the attack never saw)" if judge else "") + ":",
        "",
        "| defense | method | attacker | n | " + " | ".join(titles[m] for m in semantic) + " |",
        "|" + "---|" * (4 + len(semantic)),
    ]
    for row in rows:
        for method, entry in row["attacks"].items():
            for attacker in ATTACKERS if row["defense"] != "none" else ("naive",):
                summary = entry.get(attacker)
                if summary:
                    lines.append(
                        "| "
                        + " | ".join(
                            [
                                row["defense"],
                                method,
                                attacker,
                                str(summary["n"]),
                                *(_fmt(summary, m, 3 if m == "judge_similarity" else 2) for m in semantic),
                            ]
                        )
                        + " |"
                    )
    return lines


def _recommendation(rec: Mapping | None, threshold: float) -> str:
    """The sentence under a layer's tables: the setting that keeps utility and lowers the best attack most."""
    if rec and rec["defense"] == "none" or rec and rec["psnr_drop"] is not None and rec["psnr_drop"] <= 0:
        return (
            f"No defense setting that keeps utility >= {threshold} lowers the best "
            f"attack's PSNR below no defense ({rec['best_attack_psnr']:.2f} dB)."
        )
    if rec:
        drop = "" if rec["psnr_drop"] is None else f", {rec['psnr_drop']:.2f} dB below no defense"
        return (
            f"Keeping utility >= {threshold}: **{rec['defense']}** (utility "
            f"{rec['utility']:.2f}) brings the best attack's PSNR down most, to "
            f"{rec['best_attack_psnr']:.2f}"
            f" dB{drop}."
        )
    return f"No setting keeps utility >= {threshold} (or utility is unavailable)."
