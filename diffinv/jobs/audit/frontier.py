"""The privacy-utility frontier of an audit's settings, fixed and learned: each setting's leak (the best
attack's score), the Pareto frontier, the verdict per utility budget, and every learned setting against every
plain-noise one, paired on the same images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...stats import paired_difference_ci
from ..summary import finite_per_image
from .items import ATTACKERS
from .summary import with_interval

__all__ = ["LEAK_METRICS", "LOSS_BUDGETS", "frontier_report"]

LOSS_BUDGETS = (0.01, 0.05, 0.10)  # the verdict table: the utility lost, at most (1, 5 and 10 points)
LEAK_METRICS = ("judge_accuracy", "top1_accuracy", "top1_agreement")  # the leak: the first the records have


def _per_image(
    records: Sequence[Mapping], kind: str, layer: str, spec: str, metric: str, method: str = "", attacker: str = ""
) -> dict[str, float]:
    group = [
        r
        for r in records
        if r["kind"] == kind
        and r["layer"] == layer
        and r["defense"] == spec
        and (kind != "attack" or (r["method"] == method and r["attacker"] == attacker))
    ]
    return finite_per_image(group, metric)[0]


def frontier_report(
    records: Sequence[Mapping], rows: Sequence[dict], layers: Sequence[str], frontier: Mapping
) -> dict:
    """The privacy-utility frontier of every setting, fixed and learned (its rows get ``accuracy``, ``agreement``,
    ``leak``, ``leak_ci`` and ``leak_attack``):

    * ``leak``: the *best attack's* judge accuracy (the method and attacker with the highest mean; without a judge
      the target's accuracy on the reconstructions, without labels its agreement: :data:`LEAK_METRICS`);
    * per layer, ``pareto``: the settings no other one beats in both utility (higher) and leak (lower);
    * ``verdict``: for a utility loss of at most 1, 5 and 10 points (:data:`LOSS_BUDGETS`) below no defense, the
      setting with the lowest leak, with its intervals;
    * ``versus_baseline``: every learned setting against every plain-noise one (``frontier["baseline"]``), paired
      on the same images: the leak's and the utility's differences with their bootstrap intervals, and whether
      the learned one *beats* it (its leak lower, the interval below 0, at no lower mean utility).
    """
    metric = next(
        (m for m in LEAK_METRICS if any(r.get(m) is not None for r in records if r["kind"] == "attack")),
        LEAK_METRICS[-1],
    )
    out = {
        "utility": frontier["utility"],
        "leak_metric": metric,
        "learned": list(frontier["learned"]),
        "baseline": list(frontier["baseline"]),
        "layers": {},
    }
    for row in rows:
        _add_leak(records, row, metric)
    for layer in layers:
        out["layers"][layer] = _layer_frontier(records, rows, layer, frontier, metric)
    return out


def _add_leak(records: Sequence[Mapping], row: dict, metric: str) -> None:
    """A row's ``accuracy`` and ``agreement`` (with intervals), and its leak: the best attack's ``metric``."""
    util = [
        r for r in records if r["kind"] == "utility" and r["layer"] == row["layer"] and r["defense"] == row["defense"]
    ]
    for key in ("accuracy", "agreement"):
        with_interval(row, key, util, key)
    best = max(
        (
            (m, a, e[a][metric])
            for m, e in row["attacks"].items()
            for a in ATTACKERS
            if e.get(a) and e[a].get(metric) is not None
        ),
        key=lambda t: t[2],
        default=None,
    )
    row["leak"], row["leak_ci"], row["leak_attack"] = None, None, None
    if best is not None:
        row["leak"], row["leak_ci"] = best[2], row["attacks"][best[0]][best[1]].get(f"{metric}_ci")
        row["leak_attack"] = f"{best[0]} {best[1]}"


def _layer_frontier(
    records: Sequence[Mapping], rows: Sequence[dict], layer: str, frontier: Mapping, metric: str
) -> dict:
    """A layer's Pareto frontier, verdict per utility budget and learned-versus-baseline comparisons."""
    mine = [r for r in rows if r["layer"] == layer and r["utility"] is not None and r["leak"] is not None]
    pareto = [
        r["defense"]
        for r in mine
        if not any(
            o["utility"] >= r["utility"]
            and o["leak"] <= r["leak"]
            and (o["utility"], o["leak"]) != (r["utility"], r["leak"])
            for o in mine
        )
    ]
    reference = next((r for r in mine if r["defense"] == "none"), None)
    verdict = []
    for budget in LOSS_BUDGETS:
        ok = [] if reference is None else [r for r in mine if r["utility"] >= reference["utility"] - budget - 1e-9]
        best = min(ok, key=lambda r: (r["leak"], -r["utility"]), default=None)
        verdict.append(
            {
                "max_loss": budget,
                "defense": None if best is None else best["defense"],
                **(
                    {}
                    if best is None
                    else {k: best.get(k) for k in ("utility", "utility_ci", "leak", "leak_ci", "leak_attack")}
                ),
            }
        )
    versus = []
    for learned in (r for r in mine if r["defense"] in frontier["learned"]):
        for base in (r for r in mine if r["defense"] in frontier["baseline"]):
            versus.append(_paired(records, layer, learned, base, metric))
    return {
        "pareto": pareto,
        "verdict": verdict,
        "versus_baseline": versus,
        "learned_beats_baseline": any(v["beats"] for v in versus),
    }


def _paired(records, layer: str, learned: Mapping, base: Mapping, metric: str) -> dict:
    """A learned setting against a baseline one, paired on the images both have: leak and utility differences."""

    def leak(row):
        method, attacker = row["leak_attack"].split(" ")
        source = "naive" if row["defense"] == "none" else attacker
        return _per_image(records, "attack", layer, row["defense"], metric, method, source)

    a_leak, b_leak = leak(learned), leak(base)
    a_util = _per_image(records, "utility", layer, learned["defense"], "utility")
    b_util = _per_image(records, "utility", layer, base["defense"], "utility")
    images = sorted(set(a_leak) & set(b_leak))
    leak_diff = (
        paired_difference_ci([a_leak[i] for i in images], [b_leak[i] for i in images])
        if images
        else (None, None, None)
    )
    shared = sorted(set(a_util) & set(b_util))
    util_diff = (
        paired_difference_ci([a_util[i] for i in shared], [b_util[i] for i in shared])
        if shared
        else (None, None, None)
    )
    beats = leak_diff[0] is not None and leak_diff[2] < 0 and util_diff[0] is not None and util_diff[0] >= 0
    return {
        "learned": learned["defense"],
        "baseline": base["defense"],
        "n": len(images),
        "leak_difference": leak_diff[0],
        "leak_difference_ci": None if leak_diff[0] is None else list(leak_diff[1:]),
        "utility_difference": util_diff[0],
        "utility_difference_ci": None if util_diff[0] is None else list(util_diff[1:]),
        "beats": bool(beats),
    }
