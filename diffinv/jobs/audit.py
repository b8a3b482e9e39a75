"""Privacy audit of a split point: defenses, the deployment's utility and the attacks' success.

For each layer (split point) and defense setting (:mod:`diffinv.defenses`):

* **utility**: the target's top-1 agreement when the rest of the network runs from the defended
  features (:func:`~diffinv.defenses.utility_agreement`; ``None`` with the reason where the network
  cannot be run from the layer);
* **attack success** of every method, PSNR, SSIM, LPIPS (when available) and top-1 agreement of the
  reconstruction, for two attackers: the *naive* one inverts the defended features as if they were
  not defended; the *adaptive* one knows the defense: the white-box methods that optimize
  (pixel, dip) differentiate through it inside their loss
  (:meth:`~diffinv.defenses.Defense.attacker_transform`: fresh noise/masks every step,
  straight-through quantization and top-k, the observed support of a final prune/top-k); the
  decoder is trained on defended features (the
  training job, :func:`~diffinv.jobs.training.train_decoder`, with ``defense`` set). Without a defense
  the two attackers are the same and only the naive one runs.

The run folder is a run store (:mod:`diffinv.jobs.store`): ``manifest.json``, one record per
(layer, defense, method, attacker, seed, image) and per (layer, defense, image) of utility, appended
as each work item finishes (resumable; other settings refused). The work items are split across
the processes of a ``torchrun``/``accelerate launch`` run as in the bench; the decoders are trained
first, data-parallel. The main process writes ``report.json``, ``report.md``,
``privacy_utility.png`` and ``grid_LAYER.png`` (rows = defense settings).

Example:
    >>> report = run_audit(target, images, names, ["blocks.1"], parse_defenses(["none", "noise:0.3"]),
    ...                    {"pixel": PixelInverter}, out_dir="audit_out")
    >>> report["settings"][1]["utility"], report["settings"][1]["attacks"]["pixel"]["adaptive"]["psnr"]
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..defenses import Defense, UtilityUnavailable, apply_defense, utility_agreement
from ..features import FeatureSet
from ..inverters import DecoderInverter, Inverter
from ..io import atomic_path, save_image, write_json
from ..judge import Judge, labels_tensor
from ..metrics import LPIPS, reconstruction_scores
from ..stats import bootstrap_ci, format_ci
from ..targets import TargetNetwork
from .bench import DEFAULT_BATCH_SIZE, work_items
from .items import LayerCache, WorkRunner, image_label, image_scores, item_settings, merge_records, place
from .report import SEMANTIC_METRICS, finite_per_image, write_grid, write_privacy_utility_plot
from .store import RunStore, unique_names
from .training import NOT_SETTINGS, TrainConfig, train_decoder, with_resolved_precision

__all__ = ["ATTACKERS", "UTILITY_THRESHOLD", "audit_image_path", "decoder_folder", "run_audit"]

ATTACKERS = ("naive", "adaptive")
UTILITY_THRESHOLD = 0.9
OUTPUTS = ("images", "decoders", "report.json", "report.md", "privacy_utility.png")
METRICS = ("psnr", "ssim", "lpips", "top1_agreement", "feature_residual", "seconds",
           *(m for m in SEMANTIC_METRICS if m != "top1_agreement"))
# methods whose attack optimizes the loss of ``inverters.base.optimize`` (adaptive: through the defense)
_THROUGH_LOSS = ("pixel", "dip")


def _slug(spec: str) -> str:
    return spec.replace(":", "-").replace("+", "_")


def decoder_folder(out_dir, defense: Defense) -> Path:
    """Where the audit trains the decoders that know ``defense``: ``decoders/SPEC/LAYER`` (``none``: the naive one)."""
    return Path(out_dir) / "decoders" / _slug(defense.spec)


def audit_image_path(out_dir, layer: str, defense: str, method: str, attacker: str, seed: int, name: str) -> Path:
    """``images/LAYER/DEFENSE/METHOD_ATTACKER/NAME_seedS.png``."""
    return Path(out_dir) / "images" / layer / _slug(defense) / f"{method}_{attacker}" / f"{name}_seed{seed}.png"


def _key(record: Mapping) -> tuple:
    return (record["kind"], record["layer"], record["defense"], record.get("method", ""), record.get("attacker", ""),
            record.get("seed", 0), record.get("image", ""))


def _adaptive_reason(method: str, trained: bool) -> str | None:
    """``None`` when the method has an adaptive attacker (it optimizes through the defense, or the audit
    trains it on defended features), else why not."""
    if trained or method in _THROUGH_LOSS:
        return None
    return (f"{method}: no adaptive attacker in the audit (it does not optimize the loss of `optimize()` and is not "
            f"trained here); only the naive attack is reported")


def _defense_seed(layer: str, spec: str, start: int) -> int:
    """The seed of a chunk's defense draw: depends on the layer, the setting and the chunk, nothing else."""
    return zlib.crc32(f"{layer}|{spec}|{start}".encode())


def run_audit(
    target: TargetNetwork,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    defenses: Sequence[Defense],
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter] | TrainConfig],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: Mapping | None = None,
    overwrite: bool = False,
    progress: bool = True,
    state=None,
    labels: Sequence[int | None] | None = None,
    judge: Judge | None = None,
) -> dict:
    """Audits ``layers`` of ``target`` under each defense setting; returns the report (``report.json``).

    Args:
        target: the network (with a classifier head for utility and top-1 agreement).
        images: ``(N, 3, H, W)`` originals in [0, 1].
        sources: one name per image.
        layers: the split points.
        defenses: the settings (:func:`~diffinv.defenses.parse_defenses`); include ``Defense()``
            (none) for the undefended reference.
        methods: name -> an :class:`Inverter`, a factory ``target -> Inverter``, or, for
            ``"decoder"``, a :class:`~diffinv.jobs.training.TrainConfig` template: the audit trains one
            decoder per layer on clean features (the naive attacker) and one per defense setting on
            defended features (the adaptive one), into ``out_dir/decoders`` (``out``, ``layer``,
            ``defense``, ``target``, ``weights`` and ``size`` are filled in).
        out_dir: the run folder.
        seeds: each attack runs once per seed.
        batch_size: images per work item.
        settings: more settings for the manifest (e.g. the dataset).
        overwrite: start afresh in a folder that holds another run.
        state: accelerate's ``PartialState`` under a multi-process launch: work items are split
            across the processes, decoders trained data-parallel, the main process writes the report.
        labels: the true class of each image (``None`` where unknown): attack records carry it and the
            target's top-1 accuracy on originals and reconstructions.
        judge: a second network that the attack never saw (:class:`~diffinv.judge.Judge`): its accuracy,
            agreement and feature similarity on the reconstructions.

    Raises:
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
        ValueError: no defense setting, mismatched ``sources``, a method that cannot make images of this size.
    """
    # 1. Check inputs
    if len(sources) != len(images):
        raise ValueError(f"`sources` has {len(sources)} names for {len(images)} images.")
    if not defenses:
        raise ValueError("`defenses` is empty; give at least one setting (e.g. none).")
    if not layers:
        raise ValueError("`layers` is empty; give at least one split point.")
    defenses = list(dict.fromkeys(defenses))
    label_values = labels_tensor(labels, len(images))
    for name, value in methods.items():
        if isinstance(value, TrainConfig) and name != "decoder":
            raise ValueError(f"`methods[{name!r}]` is a TrainConfig, but the audit trains only decoders ('decoder').")
    target, device = place(target, state)
    if judge is not None:
        judge = judge.to(device)
    size = tuple(images.shape[-2:])
    trainer = methods.get("decoder") if isinstance(methods.get("decoder"), TrainConfig) else None
    inverters = {m: f if isinstance(f, Inverter) else f(target) for m, f in methods.items()
                 if not isinstance(f, TrainConfig)}
    for inverter in inverters.values():
        inverter.check_image_size(size)
    names = list(methods)
    specs = [d.spec for d in defenses]
    by_spec = dict(zip(specs, defenses))
    if trainer is not None:
        trainer = with_resolved_precision(dataclasses.replace(trainer, target=target.name, weights=target.weights,
                                                              size=size[0], kind="decoder", progress=progress))
        if size[0] != size[1]:
            raise ValueError(f"the decoder trains on square images; the audited images are {size[0]}x{size[1]}.")

    # 2. Run store
    training = None
    if trainer is not None:
        training = {k: v for k, v in dataclasses.asdict(trainer).items()
                    if k not in NOT_SETTINGS + ("layer", "defense", "model", "pixel_weight", "target", "weights")}
    manifest = item_settings(
        target, images, sources, layers, seeds, batch_size, device, defenses=specs,
        methods={**{n: inv.settings() for n, inv in inverters.items()},
                 **({"decoder": {"method": "decoder", "training": training}} if trainer is not None else {})},
        attackers=list(ATTACKERS),
        labels=label_values, judge=judge)
    store = RunStore(out_dir, "audit", {**manifest, **dict(settings or {})}, overwrite=overwrite, outputs=OUTPUTS,
                     state=state)
    out_dir = store.folder
    main = state is None or state.is_main_process
    show = progress and (state is None or state.is_local_main_process)
    files = unique_names(sources)

    # 3. Work items: utility per (layer, defense, chunk); attacks per (layer, defense, method, attacker, seed, chunk)
    chunks = [w[3] for w in work_items([""], [""], [0], len(images), batch_size)]
    work = []
    for layer in layers:
        for spec in specs:
            work += [(layer, spec, "", "", 0, chunk) for chunk in chunks]
            attackers = ("naive", "adaptive") if by_spec[spec] else ("naive",)
            for method in names:
                for attacker in attackers:
                    if attacker == "adaptive" and _adaptive_reason(method, method not in inverters):
                        continue
                    work += [(layer, spec, method, attacker, seed, chunk) for seed in seeds for chunk in chunks]

    def item_keys(item):
        layer, spec, method, attacker, seed, chunk = item
        kind = "attack" if method else "utility"
        return [(kind, layer, spec, method, attacker, seed, sources[i]) for i in chunk]

    runner = WorkRunner(store, work, item_keys, _key, state)
    todo, done = runner.todo, runner.done

    # 4. Decoders (every process takes part: data-parallel training), before any attack that needs them
    decoders = {}
    if trainer is not None:
        # the naive attacker's decoder knows no defense; the adaptive one's knows the item's
        needed = dict.fromkeys((w[0], w[1] if w[3] == "adaptive" else "none") for w in todo if w[2] == "decoder")
        for layer, spec in needed:
            folder = decoder_folder(out_dir, by_spec.get(spec, Defense())) / layer
            config = dataclasses.replace(trainer, out=str(folder), layer=layer,
                                         defense=None if spec == "none" else spec)
            result = train_decoder(config)
            if main and ("training", layer, spec, "decoder", "", 0, "") not in done:
                store.append({"kind": "training", "layer": layer, "defense": spec, "method": "decoder",
                              "seconds": result.log["train_seconds"], "steps": result.step,
                              "val_psnr": result.val_psnr, "val_ssim": result.val_ssim})
        if state is not None:
            state.wait_for_everyone()

    # 5. This process's work items
    lpips_metric = LPIPS()
    images = images.to(device)
    cache = LayerCache()
    originals_scored: dict = {}  # per batch of images: the target's and the judge's outputs on the originals

    def run_item(item) -> None:
        layer, spec, method, attacker, seed, chunk = item
        defense = by_spec[spec]

        def extract():
            clean = FeatureSet.extract(target, images[chunk.start:chunk.stop], layer,
                                       sources=[sources[i] for i in chunk])
            generator = torch.Generator().manual_seed(_defense_seed(layer, spec, chunk.start))
            return clean, apply_defense(clean, defense, generator)

        clean, defended = cache.get((layer, spec, chunk), extract)
        originals = images[chunk.start:chunk.stop]
        keys = item_keys(item)
        if not method:
            tic = time.perf_counter()
            try:
                agreement, reason = utility_agreement(target, originals, layer, clean.features,
                                                      defended.features).tolist(), None
            except UtilityUnavailable as err:
                agreement, reason = [None] * len(chunk), str(err)
            seconds = (time.perf_counter() - tic) / len(chunk)
            for j, i in enumerate(chunk):
                if keys[j] not in done:
                    store.append({"kind": "utility", "layer": layer, "defense": spec, "image": sources[i],
                                  "utility": agreement[j], "reason": reason, "seconds": seconds})
            return
        generator = torch.Generator().manual_seed(seed)
        if method not in inverters:  # the decoders the audit trains
            known = spec if attacker == "adaptive" else "none"
            if known not in decoders:
                folder = decoder_folder(out_dir, by_spec.get(known, Defense()))
                decoders[known] = DecoderInverter(target, decoder=folder)
            out = decoders[known].invert(defended, generator=generator, progress=show)
        elif attacker == "adaptive":
            draws = torch.Generator().manual_seed(_defense_seed(layer, spec, chunk.start) + 1 + seed)
            out = inverters[method].invert(defended, generator=generator, progress=show,
                                           feature_transform=defense.attacker_transform(
                                               defended.features.to(device), draws))
        else:
            out = inverters[method].invert(defended, generator=generator, progress=show)
        scores = reconstruction_scores(target, out.images.to(device), originals, lpips=lpips_metric, judge=judge,
                                       feature_residual=out.feature_residual,
                                       originals_cache=originals_scored.setdefault(chunk, {}),
                                       labels=None if label_values is None else label_values[chunk.start:chunk.stop])
        white_box = method in inverters and bool(inverters[method].white_box)
        for j, i in enumerate(chunk):
            if keys[j] in done:
                continue
            file = save_image(out.images[j], audit_image_path(out_dir, layer, spec, method, attacker, seed, files[i]))
            store.append({"kind": "attack", "layer": layer, "defense": spec, "method": method, "attacker": attacker,
                          "seed": seed, "image": sources[i], "file": file.relative_to(out_dir).as_posix(),
                          "white_box": white_box,
                          "label": image_label(label_values, i),
                          **image_scores(scores, j), "seconds": out.seconds / len(chunk)})

    runner.run(run_item, desc="audit", show=show,
               describe=lambda w: f"{w[0]} {w[1]} {w[2] or 'utility'} {w[3]} images {w[5].start}-{w[5].stop - 1}")
    runner.close()

    # 6. Report (main process): the run's own records only (the last of an item recorded twice), said in notes
    own = {k for item in work for k in item_keys(item)}
    own |= {("training", layer, spec, "decoder", "", 0, "") for layer in layers for spec in specs}
    notes: list[str] = []
    records = merge_records(store.records(), _key, own=own, notes=notes)
    report = build_report(records, layers, specs, names, [m for m in names if m not in inverters], meta={
        "target": target.name, "image_size": list(size), "images": len(sources), "seeds": list(seeds),
        "lpips": lpips_metric.reason or "alexnet", "device": str(device),
        "judge": judge.name if judge is not None else None})
    report["notes"] = notes + report["notes"]
    if main:
        for note in report["notes"]:
            warnings.warn(f"{str(out_dir / 'records.jsonl')!r}: {note}", stacklevel=2)
        write_json(out_dir / "report.json", {"config": store.settings, **report})
        write_report_md(report, out_dir / "report.md")
        write_privacy_utility_plot(report["settings"], out_dir / "privacy_utility.png", layers=list(layers),
                                   methods=names)
        columns = [f"{m} {a}" for m in names for a in ATTACKERS]
        for layer in layers:
            write_grid(images, specs, columns,
                       lambda spec, column, layer=layer: _grid_file(out_dir, layer, spec, column, seeds[0], files[0]),
                       out_dir / f"grid_{layer}.png")
    if state is not None:
        state.wait_for_everyone()
    return report


def _grid_file(out_dir, layer, spec, column, seed, name) -> Path:
    method, attacker = column.rsplit(" ", 1)
    path = audit_image_path(out_dir, layer, spec, method, attacker, seed, name)
    if attacker == "adaptive" and spec == "none":  # no defense: the adaptive attacker is the naive one
        path = audit_image_path(out_dir, layer, spec, method, "naive", seed, name)
    return path


def _finite_or_zero(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _with_interval(summary: dict, key: str, records: Sequence[Mapping], metric: str) -> int:
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


def build_report(records: Sequence[Mapping], layers: Sequence[str], specs: Sequence[str], methods: Sequence[str],
                 trained: Sequence[str] = (), meta: Mapping | None = None) -> dict:
    """The audit's summary of ``records``: per (layer, defense setting) the utility and, per method and
    attacker, the mean metrics; per layer the setting that keeps utility >= 0.9 with the lowest best
    attack PSNR; the cost in seconds. ``trained``: the methods the audit trained per defense.

    Every mean is over images (each the mean of its seeds), with its 95 % bootstrap interval over images
    beside it (``METRIC_ci``: ``[low, high]``); ``n`` counts the images. Values that are not finite numbers are
    left out of the mean (``METRIC_n``: the images in it) and said in ``notes``."""
    rows = []
    left_out: dict[str, list[str]] = {}  # metric -> where values were left out
    for layer in layers:
        for spec in specs:
            util = [r for r in records if r["kind"] == "utility" and r["layer"] == layer and r["defense"] == spec]
            row = {"layer": layer, "defense": spec, "utility_n": len({r["image"] for r in util}),
                   "utility_reason": next((r["reason"] for r in util if r.get("reason")), None), "attacks": {}}
            if _with_interval(row, "utility", util, "utility"):
                left_out.setdefault("utility", []).append(f"{layer} {spec}")
            for method in methods:
                entry = {}
                for attacker in ATTACKERS:
                    source = "naive" if spec == "none" else attacker
                    group = [r for r in records if r["kind"] == "attack" and r["layer"] == layer
                             and r["defense"] == spec and r["method"] == method and r["attacker"] == source]
                    entry[attacker] = None
                    if group:
                        entry[attacker] = {"n": len({r["image"] for r in group}),
                                           "seeds": len({r.get("seed", 0) for r in group})}
                        for metric in METRICS:
                            if _with_interval(entry[attacker], metric, group, metric):
                                left_out.setdefault(metric, []).append(f"{layer} {spec} {method} {source}")
                reason = None if spec == "none" else _adaptive_reason(method, method in trained)
                if reason:
                    entry["adaptive_reason"] = reason
                row["attacks"][method] = entry
            psnrs = [a["psnr"] for e in row["attacks"].values() for k, a in e.items()
                     if k in ATTACKERS and a and a["psnr"] is not None]
            row["best_attack_psnr"] = max(psnrs) if psnrs else None
            top1s = [a["top1_agreement"] for e in row["attacks"].values() for k, a in e.items()
                     if k in ATTACKERS and a and a["top1_agreement"] is not None]
            row["best_attack_top1"] = max(top1s) if top1s else None
            rows.append(row)
    recommendation = {}
    for layer in layers:
        mine = [r for r in rows if r["layer"] == layer]
        reference = next((r for r in mine if r["defense"] == "none"), None)
        ok = [r for r in mine if r["utility"] is not None and r["utility"] >= UTILITY_THRESHOLD
              and r["best_attack_psnr"] is not None]
        best = min(ok, key=lambda r: r["best_attack_psnr"], default=None)
        recommendation[layer] = None if best is None else {
            "defense": best["defense"], "utility": best["utility"], "best_attack_psnr": best["best_attack_psnr"],
            "psnr_drop": (reference["best_attack_psnr"] - best["best_attack_psnr"])
            if reference and reference["best_attack_psnr"] is not None else None}
    def seconds(kind):  # a value that is not a finite number counts 0
        return sum(_finite_or_zero(r.get("seconds")) for r in records if r["kind"] == kind)

    cost = {"attack_seconds": seconds("attack"), "utility_seconds": seconds("utility"),
            "decoder_training_seconds": seconds("training")}
    notes = []
    if left_out:
        notes.append("Left out of the means, not a finite number (NaN, infinite or not a number): " + "; ".join(
            f"{metric} ({', '.join(dict.fromkeys(where))})" for metric, where in left_out.items()) + ".")
    return {"meta": dict(meta or {}), "utility_threshold": UTILITY_THRESHOLD, "settings": rows,
            "recommendation": recommendation, "cost_seconds": cost, "notes": notes}


def write_report_md(report: Mapping, path) -> str:
    """``report.md``: one table per layer (defense x method: utility, naive / adaptive PSNR, SSIM, top-1), each
    mean with its 95 % bootstrap interval over images and the number of images; the accuracy against true labels
    and the judge's scores when the records have them."""

    def fmt(summary, key, digits=2):
        value = (summary or {}).get(key)
        if value is None:
            return "n/a"
        low, high = (summary.get(f"{key}_ci") or [value, value])
        counted = summary.get(f"{key}_n")  # only where values were left out as not finite
        return format_ci(value, low, high, digits) + ("" if counted is None else f" (n = {counted})")

    lines = ["# Privacy audit", ""]
    meta = report.get("meta", {})
    if meta:
        lines += [f"Target `{meta.get('target')}`, {meta.get('images')} images at {meta.get('image_size')}, seeds "
                  f"{meta.get('seeds')}, device {meta.get('device')}. Utility = top-1 agreement of the network run "
                  f"from "
                  f"the defended features with the undefended network; attack top-1 = agreement of the "
                  f"reconstruction's class. naive / adaptive = attacker unaware of / aware of the defense. "
                  f"Each value: mean [95 % bootstrap interval over images]; n = images (each the mean of its seeds).",
                  ""]
        if meta.get("lpips") != "alexnet":
            lines += [f"{meta.get('lpips')}.", ""]
    semantic = [m for m in METRICS if m in SEMANTIC_METRICS and m != "top1_agreement" and any(
        (a or {}).get(m) is not None for row in report["settings"] for e in row["attacks"].values()
        for k, a in e.items() if k in ATTACKERS)]
    layers = list(dict.fromkeys(r["layer"] for r in report["settings"]))
    for layer in layers:
        lines += [f"## {layer}", "", "| defense | utility | method | n | PSNR naive | PSNR adaptive | SSIM naive | "
                  "SSIM adaptive | top-1 naive | top-1 adaptive | s / image (adaptive) |", "|" + "---|" * 11]
        for row in (r for r in report["settings"] if r["layer"] == layer):
            for method, entry in row["attacks"].items():
                n, a = entry.get("naive") or {}, entry.get("adaptive") or {}
                lines.append("| " + " | ".join([
                    row["defense"], fmt(row, "utility"), method, str(n.get("n", a.get("n", 0))),
                    fmt(n, "psnr"), fmt(a, "psnr"), fmt(n, "ssim", 3), fmt(a, "ssim", 3),
                    fmt(n, "top1_agreement"), fmt(a, "top1_agreement"),
                    fmt(a if a.get("seconds") is not None else n, "seconds")]) + " |")
            if row["utility_reason"]:
                lines.append(f"| {row['defense']} | n/a: {row['utility_reason']} |" + " |" * 9)
        if semantic:
            titles = {"original_top1_accuracy": "target acc. (originals)", "top1_accuracy": "target acc. (recon.)",
                      "judge_original_accuracy": "judge acc. (originals)", "judge_accuracy": "judge acc. (recon.)",
                      "judge_agreement": "judge agr.", "judge_similarity": "judge feature cos."}
            judge = meta.get("judge")
            lines += ["", "True labels" + (f" and the judge `{judge}` (a network the attack never saw)"
                                           if judge else "") + ":", "",
                      "| defense | method | attacker | n | " + " | ".join(titles[m] for m in semantic) + " |",
                      "|" + "---|" * (4 + len(semantic))]
            for row in (r for r in report["settings"] if r["layer"] == layer):
                for method, entry in row["attacks"].items():
                    for attacker in ATTACKERS if row["defense"] != "none" else ("naive",):
                        summary = entry.get(attacker)
                        if summary:
                            lines.append("| " + " | ".join([row["defense"], method, attacker, str(summary["n"]), *(
                                fmt(summary, m, 3 if m == "judge_similarity" else 2) for m in semantic)]) + " |")
        rec = report["recommendation"].get(layer)
        lines.append("")
        if rec and rec["defense"] == "none" or rec and rec["psnr_drop"] is not None and rec["psnr_drop"] <= 0:
            lines.append(f"No defense setting that keeps utility >= {report['utility_threshold']} lowers the best "
                         f"attack's PSNR below no defense ({rec['best_attack_psnr']:.2f} dB).")
        elif rec:
            drop = "" if rec["psnr_drop"] is None else f", {rec['psnr_drop']:.2f} dB below no defense"
            lines.append(f"Keeping utility >= {report['utility_threshold']}: **{rec['defense']}** (utility "
                         f"{rec['utility']:.2f}) brings the best attack's PSNR down most, to "
                         f"{rec['best_attack_psnr']:.2f}"
                         f" dB{drop}.")
        else:
            lines.append(f"No setting keeps utility >= {report['utility_threshold']} (or utility is unavailable).")
        lines.append("")
    cost = report["cost_seconds"]
    lines.append(f"Cost: {cost['attack_seconds']:.0f} s of attacks, {cost['utility_seconds']:.1f} s of utility, "
                 f"{cost['decoder_training_seconds']:.0f} s of decoder training.")
    if report.get("notes"):
        lines += ["", "Records: " + " ".join(report["notes"])]
    text = "\n".join(lines) + "\n"
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
