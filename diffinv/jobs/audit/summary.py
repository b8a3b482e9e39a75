"""The audit's summary of its records, per (layer, defense setting): the utility and, per method and
attacker, each metric's mean over images with its 95 % bootstrap interval; per layer the setting that keeps
utility >= :data:`UTILITY_THRESHOLD` with the lowest best attack PSNR."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...stats import bootstrap_ci
from ..summary import SEMANTIC_METRICS, finite_per_image
from .items import ATTACKERS

__all__ = ["METRICS", "UTILITY_THRESHOLD", "recommendations", "setting_row", "with_interval"]

UTILITY_THRESHOLD = 0.9
METRICS = (
    "psnr",
    "ssim",
    "lpips",
    "top1_agreement",
    "feature_residual",
    "seconds",
    *(m for m in SEMANTIC_METRICS if m != "top1_agreement"),
)


def adaptive_reason(method: str, adaptive: bool) -> str | None:
    """``None`` when the method has an adaptive attacker (it optimizes through the defense, or the audit
    trains its model on defended features), else why not."""
    if adaptive:
        return None
    return (
        f"{method}: no adaptive attacker in the audit (it does not optimize the loss of `optimize()` and is not "
        f"trained here); only the naive attack is reported"
    )


def with_interval(summary: dict, key: str, records: Sequence[Mapping], metric: str) -> int:
    """``summary[key]``: the mean over images (each the mean of its seeds) of ``metric``, ``None`` without
    values; ``summary[key + "_ci"]``: its 95 % bootstrap interval ``[low, high]`` over images. Values that are
    not finite numbers are left out (``summary[key + "_n"]``: the images in the mean); returns how many."""
    by_image, excluded = finite_per_image(records, metric)
    values = list(by_image.values())
    mean, low, high = bootstrap_ci(values) if values else (None, None, None)
    summary[key], summary[f"{key}_ci"] = mean, (None if mean is None else [low, high])
    if excluded:
        summary[f"{key}_n"] = len(values)
    return excluded


def setting_row(
    records: Sequence[Mapping], layer: str, spec: str, methods: Sequence[str], adaptive: Sequence[str], left_out: dict
) -> dict:
    """The report's row of one (layer, defense setting): its utility and, per method and attacker, the means
    (where values were left out: added to ``left_out``)."""
    util = [r for r in records if r["kind"] == "utility" and r["layer"] == layer and r["defense"] == spec]
    row = {
        "layer": layer,
        "defense": spec,
        "utility_n": len({r["image"] for r in util}),
        "utility_reason": next((r["reason"] for r in util if r.get("reason")), None),
        "attacks": {},
    }
    if with_interval(row, "utility", util, "utility"):
        left_out.setdefault("utility", []).append(f"{layer} {spec}")
    for method in methods:
        entry = {attacker: _attack_summary(records, layer, spec, method, attacker, left_out) for attacker in ATTACKERS}
        reason = None if spec == "none" else adaptive_reason(method, method in adaptive)
        if reason:
            entry["adaptive_reason"] = reason
        row["attacks"][method] = entry
    for key, metric in (("best_attack_psnr", "psnr"), ("best_attack_top1", "top1_agreement")):
        values = [
            a[metric]
            for e in row["attacks"].values()
            for k, a in e.items()
            if k in ATTACKERS and a and a[metric] is not None
        ]
        row[key] = max(values) if values else None
    return row


def _attack_summary(
    records: Sequence[Mapping], layer: str, spec: str, method: str, attacker: str, left_out: dict
) -> dict | None:
    """One attacker's means of ``METRICS`` (``None`` without records); without a defense both attackers are the
    naive one."""
    source = "naive" if spec == "none" else attacker
    group = [
        r
        for r in records
        if r["kind"] == "attack"
        and r["layer"] == layer
        and r["defense"] == spec
        and r["method"] == method
        and r["attacker"] == source
    ]
    if not group:
        return None
    summary = {"n": len({r["image"] for r in group}), "seeds": len({r.get("seed", 0) for r in group})}
    for metric in METRICS:
        if with_interval(summary, metric, group, metric):
            left_out.setdefault(metric, []).append(f"{layer} {spec} {method} {source}")
    return summary


def recommendations(rows: Sequence[Mapping], layers: Sequence[str]) -> dict:
    """Per layer, the setting that keeps utility >= :data:`UTILITY_THRESHOLD` with the lowest best attack PSNR."""
    recommendation = {}
    for layer in layers:
        mine = [r for r in rows if r["layer"] == layer]
        reference = next((r for r in mine if r["defense"] == "none"), None)
        ok = [
            r
            for r in mine
            if r["utility"] is not None and r["utility"] >= UTILITY_THRESHOLD and r["best_attack_psnr"] is not None
        ]
        best = min(ok, key=lambda r: r["best_attack_psnr"], default=None)
        recommendation[layer] = (
            None
            if best is None
            else {
                "defense": best["defense"],
                "utility": best["utility"],
                "best_attack_psnr": best["best_attack_psnr"],
                "psnr_drop": (reference["best_attack_psnr"] - best["best_attack_psnr"])
                if reference and reference["best_attack_psnr"] is not None
                else None,
            }
        )
    return recommendation
