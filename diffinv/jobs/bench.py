"""Per-layer comparison of inversion methods: records, tables and image grids.

:func:`run_benchmark` inverts the features of every (layer, method, seed), scores the
reconstructions and appends one record per image to the run store as soon as each item
finishes, so an interrupted run keeps its work and a re-run with the same settings skips
what is done; a re-run with other settings is refused (:mod:`diffinv.jobs.store`).
``diffinv demo`` is this benchmark on embedded defaults.

Example:
    >>> records = run_benchmark(target, images, names, ["blocks.1", "blocks.6"],
    ...                         {"pixel": PixelInverter, "dip": DIPInverter}, out_dir="out")
"""

from __future__ import annotations

import hashlib
import os
import resource
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..features import FeatureSet
from ..inverters import Inverter
from ..io import save_image, write_json
from ..metrics import LPIPS, psnr, ssim, top1_agreement
from ..targets import TargetNetwork
from .report import write_depth_plot, write_grid, write_table
from .store import RunStore, unique_names

__all__ = ["PeakMemory", "image_path", "run_benchmark"]


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


def _images_fingerprint(images: torch.Tensor) -> str:
    """Fingerprint of the images as 8-bit pixels (what defines the benchmark's inputs)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:16]


def image_path(out_dir: str | os.PathLike, layer: str, method: str, seed: int, name: str) -> Path:
    """Where the benchmark writes a reconstruction: ``images/LAYER/METHOD/NAME_seedS.png``."""
    return Path(out_dir) / "images" / layer / method / f"{name}_seed{seed}.png"


OUTPUTS = ("images", "results.json", "results.md", "grid.png", "psnr_vs_depth.png")


def run_benchmark(
    target: TargetNetwork,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter]],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    settings: Mapping | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Inverts every (layer, method, seed) and writes results, tables and grids into a run store.

    Args:
        target: the network; its ``input_size`` should equal the images' size.
        images: ``(N, 3, H, W)`` originals in [0, 1].
        sources: one name per image (file paths or dataset names); output file names are made
            unique per source (:func:`~diffinv.jobs.store.unique_names`).
        layers: the layers to invert, shallow to deep.
        methods: name -> an :class:`Inverter` for the target, or a factory ``target -> Inverter``.
        out_dir: the run folder: ``manifest.json``, ``records.jsonl``, ``results.json``,
            ``results.md``, ``grid.png``, ``psnr_vs_depth.png`` and ``images/``.
        seeds: each (layer, method) is run once per seed.
        settings: more settings that define the results (e.g. the dataset), for the manifest.
        overwrite: start afresh in a folder that holds a run with other settings.

    Returns:
        Every record of the run (resumed ones included).

    Raises:
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
    """
    if len(sources) != len(images):
        raise ValueError(f"`sources` has {len(sources)} names for {len(images)} images.")
    inverters = {m: f if isinstance(f, Inverter) else f(target) for m, f in methods.items()}
    for inverter in inverters.values():
        inverter.check_image_size(tuple(images.shape[-2:]))
    device = target.mean.device
    manifest = {
        "target": {**target.identity(), "input_size": list(target.input_size) if target.input_size else None},
        "layers": list(layers),
        "methods": {name: inverter.settings() for name, inverter in inverters.items()},
        "seeds": list(seeds),
        "image_size": list(images.shape[-2:]),
        "images": list(sources),
        "images_fingerprint": _images_fingerprint(images),
        "device": device.type,
        **dict(settings or {}),
    }
    store = RunStore(out_dir, "bench", manifest, overwrite=overwrite, outputs=OUTPUTS)
    out_dir = store.folder
    names = unique_names(sources)
    done = store.keys(_key)
    lpips_metric = LPIPS()
    images = images.to(device)
    work = [(layer, method, seed) for layer in layers for method in inverters for seed in seeds]
    todo = [w for w in work if any((*w, s) not in done for s in sources)]
    meta = {"target": target.name, "image_size": list(images.shape[-2:]), "lpips": lpips_metric.reason or "alexnet",
            "device": str(device)}
    bar = tqdm(total=len(work), initial=len(work) - len(todo), desc="benchmark", disable=not progress)
    features = {}
    for layer, method, seed in todo:
        bar.set_postfix_str(f"{layer} {method} seed {seed}")
        if layer not in features:
            features[layer] = FeatureSet.extract(target, images, layer, sources=list(sources))
        inverter = inverters[method]
        with PeakMemory(device) as memory:
            out = inverter.invert(features[layer], generator=torch.Generator().manual_seed(seed), progress=progress)
        recon = out.images.to(device)
        scores = {
            "psnr": psnr(recon, images),
            "ssim": ssim(recon, images),
            "lpips": lpips_metric(recon, images),
            "feature_residual": out.feature_residual,
            "top1_agreement": top1_agreement(target, recon, images),
        }
        for i, (source, name) in enumerate(zip(sources, names)):
            file = save_image(out.images[i], image_path(out_dir, layer, method, seed, name))
            record = {"layer": layer, "method": method, "seed": seed, "image": source,
                      "file": file.relative_to(out_dir).as_posix(), "white_box": bool(inverter.white_box)}
            for metric, values in scores.items():
                record[metric] = None if values is None else float(values[i])
            record["seconds"] = out.seconds / len(sources)
            record["peak_memory_mb"] = memory.peak_mb
            record["skipped_steps"] = int(out.info.get("skipped_steps", 0))
            if _key(record) not in done:
                store.append(record)
        write_json(out_dir / "results.json", {"config": {**meta, **store.settings}, "records": store.records()})
        bar.update(1)
    bar.close()
    records = store.records()
    write_json(out_dir / "results.json", {"config": {**meta, **store.settings}, "records": records})
    write_table(records, out_dir / "results.md", layers=layers, methods=list(inverters), meta=meta)
    write_grid(images, layers, list(inverters), lambda layer, method: image_path(out_dir, layer, method, seeds[0], names[0]),
               out_dir / "grid.png")
    write_depth_plot(records, out_dir / "psnr_vs_depth.png", layers=list(layers), methods=list(inverters))
    return records
