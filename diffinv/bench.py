"""Per-layer comparison of inversion methods: records, tables and image grids.

:func:`run_benchmark` inverts the features of every (layer, method, seed), scores the
reconstructions and appends one record per image to ``results.json`` as soon as each
item finishes, so an interrupted run keeps its work and a re-run skips what is done.
``diffinv demo`` is this benchmark on embedded defaults.

Example:
    >>> records = run_benchmark(target, images, names, ["blocks.1", "blocks.6"],
    ...                         {"pixel": PixelInverter, "dip": DIPInverter}, out_dir="out")
"""

from __future__ import annotations

import json
import math
import os
import resource
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .features import FeatureSet
from .images import load_image, save_image
from .inverters.base import Inverter
from .metrics import LPIPS, feature_residual, psnr, ssim, top1_agreement
from .targets import TargetNetwork

__all__ = ["PeakMemory", "run_benchmark", "summarize", "write_depth_plot", "write_grid", "write_table"]

METRICS = ("psnr", "ssim", "lpips", "feature_residual", "top1_agreement", "seconds", "peak_memory_mb")


class PeakMemory:
    """Peak memory of a block of work, in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU: the process's
    resident set size, sampled every few milliseconds by a thread (the honest peak of
    this block, not of the whole process so far).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device, self.interval, self.peak_mb = torch.device(device), interval, 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, _rss_bytes()) / 2**20
        return False


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _key(record: Mapping) -> tuple:
    return (record["layer"], record["method"], record["seed"], record["image"])


def _load_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["records"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a diffinv results file ({err}); move it away or pick another --out.") from err


def _write_json(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def image_path(out_dir: Path, layer: str, method: str, seed: int, source: str) -> Path:
    return out_dir / "images" / layer / method / f"{Path(source).stem}_seed{seed}.png"


def run_benchmark(
    target: TargetNetwork,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    methods: Mapping[str, Callable[[TargetNetwork], Inverter]],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    config: Mapping | None = None,
    progress: bool = True,
) -> list[dict]:
    """Inverts every (layer, method, seed) and writes results, tables and grids.

    Args:
        target: the network; its ``input_size`` should equal the images' size.
        images: ``(N, 3, H, W)`` originals in [0, 1].
        sources: one name per image.
        layers: the layers to invert, shallow to deep.
        methods: name -> factory building an :class:`Inverter` for the target.
        out_dir: ``results.json``, ``results.md``, ``grid.png``, ``psnr_vs_depth.png`` and
            ``images/`` go here.
        seeds: each (layer, method) is run once per seed.
        config: recorded in ``results.json``.

    Returns:
        All records (previous ones included).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(sources) != len(images):
        raise ValueError(f"`sources` has {len(sources)} names for {len(images)} images.")
    results_path = out_dir / "results.json"
    records = _load_records(results_path)
    done = {_key(r) for r in records}
    lpips_metric = LPIPS()
    device = target.mean.device
    images = images.to(device)
    work = [(layer, method, seed) for layer in layers for method in methods for seed in seeds]
    todo = [w for w in work if any((*w, s) not in done for s in sources)]
    meta = {"target": target.name, "image_size": list(images.shape[-2:]), "sources": list(sources),
            "lpips": lpips_metric.reason or "alexnet", "device": str(device), **dict(config or {})}
    bar = tqdm(total=len(work), initial=len(work) - len(todo), desc="benchmark", disable=not progress)
    features = {}
    for layer, method, seed in todo:
        bar.set_postfix_str(f"{layer} {method} seed {seed}")
        if layer not in features:
            features[layer] = FeatureSet.extract(target, images, layer, sources=list(sources))
        inverter = methods[method](target)
        generator = torch.Generator().manual_seed(seed)
        with PeakMemory(device) as memory:
            out = inverter.invert(features[layer], generator=generator, progress=progress)
        recon = out.images.to(device)
        scores = {
            "psnr": psnr(recon, images),
            "ssim": ssim(recon, images),
            "lpips": lpips_metric(recon, images),
            "feature_residual": feature_residual(target, recon, features[layer].features, layer),
            "top1_agreement": top1_agreement(target, recon, images),
        }
        for i, source in enumerate(sources):
            save_image(out.images[i], image_path(out_dir, layer, method, seed, source))
            record = {"layer": layer, "method": method, "seed": seed, "image": source,
                      "white_box": bool(getattr(inverter, "white_box", True))}
            for name, values in scores.items():
                record[name] = None if values is None else float(values[i])
            record["seconds"] = out.seconds / len(sources)
            record["peak_memory_mb"] = memory.peak_mb
            record["skipped_steps"] = int(out.info.get("skipped_steps", 0))
            records = [r for r in records if _key(r) != _key(record)] + [record]
        _write_json(results_path, {"config": meta, "records": records})
        bar.update(1)
    bar.close()
    _write_json(results_path, {"config": meta, "records": records})
    # Tables and figures cover every record in the folder: earlier runs may have added layers or methods.
    layers = list(dict.fromkeys([*(r["layer"] for r in records), *layers]))
    methods = list(dict.fromkeys([*(r["method"] for r in records), *methods]))
    write_table(records, out_dir / "results.md", layers=layers, methods=methods, meta=meta)
    write_grid(images, sources, out_dir, layers, methods, seed=seeds[0], path=out_dir / "grid.png")
    write_depth_plot(records, out_dir / "psnr_vs_depth.png", layers=layers, methods=methods)
    return records


def summarize(records: Sequence[Mapping], layers: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """Mean and std of each metric per (layer, method), over images and seeds."""
    rows = []
    for layer in layers:
        for method in methods:
            group = [r for r in records if r["layer"] == layer and r["method"] == method]
            if not group:
                continue
            row = {"layer": layer, "method": method, "n": len(group), "white_box": group[0].get("white_box", True)}
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
        cells = [row["layer"], row["method"], "white" if row["white_box"] else "black", str(row["n"])]
        for metric in METRICS:
            value = row[metric]
            cells.append("n/a" if value is None else f"{fmt[metric].format(value[0])} ± {fmt[metric].format(value[1])}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if meta:
        notes.append(f"Target `{meta.get('target')}`, images {meta.get('image_size')}, device {meta.get('device')}.")
        if meta.get("lpips") != "alexnet":
            notes.append(str(meta.get("lpips")) + ".")
    notes.append("Mean ± std over images and seeds; top-1 agr. = share of reconstructions the target classifies "
                 "as it classifies the original; peak MiB = GPU allocated or CPU resident set during the inversion.")
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    Path(path).write_text(text)
    return text


def write_grid(images, sources, out_dir, layers, methods, *, seed: int = 0, path=None, index: int = 0) -> Path | None:
    """Rows = layers, columns = original + methods, for image ``index``."""
    from PIL import Image, ImageDraw

    from .images import to_pil

    out_dir = Path(out_dir)
    path = Path(path or out_dir / "grid.png")
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
            file = image_path(out_dir, layer, method, seed, sources[index])
            if file.is_file():
                grid.paste(to_pil(load_image(file, (h, w))), (label_w + (j + 1) * w, y))
    tmp = path.with_name(path.name + ".tmp")
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
