"""A clip's windowed inversion (:func:`invert_video`) as a job of the job protocol (:class:`VideoJob`).

With an output folder the run is a run store: ``manifest.json`` holds every setting that defines the results,
every frame is written as a PNG as soon as its window finishes and then appended as one record to
``records.jsonl``, and ``metrics.json`` is rewritten atomically after each window; a run with the same settings
continues where it stopped, one with other settings is refused. The windows (:class:`WindowItem`) run in order
in one process, or, when they are independent, claimed one at a time by the processes of a launch
(:func:`~diffinv.jobs.items.run_job`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ...features import FeatureSet, resolve_features
from ...inverters import Inverter
from ...io import pixels_fingerprint, save_image, write_json
from ...metrics import feature_residual, psnr, ssim
from ..items import Job, run_job
from ..store import RunStore
from .frames import OUTPUTS, finished_frames, frame_image, frame_path, quantize_8bit
from .summary import METRICS_FILE, mean_abs_diff, video_summary, with_temporal_diffs
from .windows import WindowItem, checked_references, video_options, windows_of

__all__ = ["VideoInversionOutput", "VideoJob", "invert_video"]


@dataclass
class VideoInversionOutput:
    """The result of :func:`invert_video`.

    Attributes:
        images: ``(T, 3, H, W)`` reconstructions in [0, 1], 8-bit quantized (what the PNGs
            hold); frames not finished are zeros (see ``done``).
        done: per frame, whether it is finished.
        records: per-frame metrics (finished frames, in frame order).
        summary: :func:`video_summary` of the finished frames plus the settings.
        computed: positions inverted by this call (a resumed run skips finished ones), by any of the
            processes when the windows were split across them.
        seconds: wall time of this call.
    """

    images: torch.Tensor
    done: list[bool]
    records: list[dict]
    summary: dict
    computed: list[int] = field(default_factory=list)
    seconds: float = 0.0


def invert_video(
    inverter: Inverter,
    features: FeatureSet | torch.Tensor,
    *,
    window: int = 4,
    references: torch.Tensor | None = None,
    frame_ids: Sequence[int] | None = None,
    warm_start: bool | None = None,
    boundary: str = "auto",
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    settings: Mapping | None = None,
    progress: bool = True,
    state=None,
) -> VideoInversionOutput:
    """Inverts the features of consecutive frames, window by window.

    Args:
        inverter: any inverter; its config's ``temporal_weight`` (λ) weights the temporal term
            inside each window (0, or no such field: independent frames).
        features: ``(T, ...)`` features of consecutive frames, in order.
        window: frames per batch (memory and speed; smoothing is continuous across windows).
        references: the source frames ``(T, 3, H, W)``, to score PSNR/SSIM and temporal figures.
        frame_ids: the frame number of each item (file names ``frames/frame_%05d.png``);
            default ``0..T-1``.
        warm_start: start each window from the previous window's last reconstruction
            (``invert(init=...)``). Default: only when λ > 0.
        boundary: how the previous window's last frame enters the temporal term when λ > 0:
            ``"anchor"`` (a fixed image, ``invert(anchor=...)``), ``"overlap"`` (re-invert it as the
            window's first frame, discard the result), ``"none"``, or ``"auto"`` (anchor if the
            inverter accepts it, else overlap).
        out_dir: the run folder (a :class:`~diffinv.jobs.store.RunStore`): ``manifest.json``,
            ``records.jsonl`` (one record per finished frame), ``frames/*.png`` (written after each
            window) and ``metrics.json`` (config, summary and per-frame metrics; atomic). A folder
            that holds a run with the same settings is resumed: frames whose record and PNG exist
            are not inverted again. ``None``: write nothing.
        overwrite: start afresh in ``out_dir`` even when it holds a run (with other settings:
            without ``overwrite`` that is refused).
        seed: each window uses ``torch.Generator().manual_seed(seed * 100_000 + first position)``,
            and warm starts/anchors are the 8-bit frames (as written), so a resumed run computes
            what an uninterrupted one would.
        settings: more settings that define the results (e.g. the source file and stride), for the
            manifest and ``metrics.json``'s config.
        state: accelerate's ``PartialState`` of a multi-process launch, to share the windows of one clip
            (independent windows only: λ = 0, no warm start; an ``out_dir`` every process sees): each window
            is claimed by one process (:func:`~diffinv.jobs.items.run_job`), which appends its records to its
            own shard; every process returns the whole run, the main one writes ``metrics.json``. Each window
            keeps its seed: the frames are those of a one-process run. ``None`` (or one process): no split.

    Returns:
        :class:`VideoInversionOutput`.

    Raises:
        ValueError: features that do not fit the target, ``references`` / ``frame_ids`` of
            another length or size, bad ``window``/``boundary``; ``state`` of several processes with
            windows that depend on each other (λ > 0 or warm start) or without ``out_dir``.
        RunSettingsError: ``out_dir`` holds a run made with other settings (the message lists
            each changed setting) and ``overwrite`` is not set.
    """
    start_time = time.perf_counter()
    job = VideoJob(
        inverter,
        features,
        window=window,
        references=references,
        frame_ids=frame_ids,
        warm_start=warm_start,
        boundary=boundary,
        out_dir=out_dir,
        overwrite=overwrite,
        seed=seed,
        settings=settings,
        progress=progress,
        state=state,
    )
    job.run()
    return job.output(time.perf_counter() - start_time)


class VideoJob(Job):
    """A clip's windowed inversion as a job of :class:`WindowItem`: its run store (or none), one window
    becoming its frames' records (:meth:`records`), and the output (:meth:`output`). The arguments are those
    of :func:`invert_video`."""

    desc = "video windows"

    def __init__(
        self,
        inverter,
        features,
        *,
        window,
        references,
        frame_ids,
        warm_start,
        boundary,
        out_dir,
        overwrite,
        seed,
        settings,
        progress,
        state,
    ):
        # 1. Check inputs
        self.inverter, self.target, self.window, self.seed, self.state = inverter, inverter.target, window, seed, state
        self.feats, self.layer, self.size = resolve_features(self.target, features, None)
        n = len(self.feats)
        self.weight, self.warm_start, self.boundary, self.split = video_options(
            inverter, n, window, boundary, warm_start, state
        )
        self.references = checked_references(references, n, self.size)
        self.frame_ids = list(range(n)) if frame_ids is None else [int(i) for i in frame_ids]
        if len(self.frame_ids) != n or len(set(self.frame_ids)) != n:
            raise ValueError(
                f"`frame_ids` must hold {n} distinct frame numbers, got {len(self.frame_ids)} "
                f"({len(set(self.frame_ids))} distinct)."
            )
        if self.split and out_dir is None:
            raise ValueError("splitting the windows of one clip across processes needs `out_dir`, where they meet.")
        self.device, self.progress = self.target.mean.device, progress
        self.manifest = self._manifest(settings)
        # 2. The run store, and what is finished already
        self.images = torch.zeros(n, 3, *self.size)
        self.frame_done = [False] * n
        self.frame_records: dict[int, dict] = {}
        self.store = None
        if out_dir is not None:
            self._open_store(out_dir, overwrite)
        self.main = not self.split or state.is_main_process
        self.todo = [p for p in range(n) if not self.frame_done[p]]
        self.computed: list[int] = []
        self.bar = None

    def _manifest(self, settings: Mapping | None) -> dict:
        """The settings that define the results (the run store's manifest, ``metrics.json``'s config)."""
        return {
            "target": self.target.identity(),
            "layer": self.layer,
            "method": self.inverter.name,
            "inverter": self.inverter.settings(),
            "temporal_weight": self.weight,
            "window": self.window,
            "warm_start": self.warm_start,
            "boundary": self.boundary,
            "image_size": list(self.size),
            "frames": self.frame_ids,
            "frames_fingerprint": None if self.references is None else pixels_fingerprint(self.references),
            "seed": self.seed,
            "device": self.device.type,
            **dict(settings or {}),
        }

    def _open_store(self, out_dir, overwrite: bool) -> None:
        """Opens the run store in ``out_dir`` (resumed, or refused with other settings) and reads what is finished."""
        self.store = RunStore(
            out_dir,
            "video",
            self.manifest,
            overwrite=overwrite,
            outputs=OUTPUTS,
            state=self.state if self.split else None,
        )
        self.manifest = self.store.settings  # as JSON gives it back
        self.load_finished()

    def run(self) -> None:
        """Runs the unfinished windows: by the job protocol's runner into the run store (claimed, resumed),
        or, without a store, one after the other."""
        items = self.items()
        if self.store is not None:
            run_job(
                self,
                self.store,
                items,
                state=self.state if self.split else None,
                show=False,
                accept=self.finished_record,
            )
            return
        for item in items:
            for _ in self.records(item):
                pass
            self.after(item)

    def load_finished(self) -> None:
        for position, (record, image) in finished_frames(self.store, self.frame_ids, self.size).items():
            self.images[position], self.frame_done[position], self.frame_records[position] = image, True, record

    def finished_record(self, record: Mapping) -> bool:
        """Whether a record's frame is finished: its PNG reads back at the clip's size."""
        return record.get("frame") in self.frame_ids and frame_image(self.store, record, self.size) is not None

    def save_metrics(self) -> None:
        if self.store is None or not self.main:
            return
        ordered = self.ordered()
        summary = video_summary(self.images, self.references, self.frame_done, ordered)
        write_json(self.store.folder / METRICS_FILE, {"config": self.manifest, "summary": summary, "frames": ordered})

    def ordered(self) -> list[dict]:
        """The finished frames' records in frame order, their temporal differences filled in."""
        return [
            with_temporal_diffs(p, self.frame_records[p], self.images, self.references, self.frame_done)
            for p in sorted(self.frame_records)
        ]

    # ------------------------------------------------------------------ the items
    def items(self) -> list[WindowItem]:
        """3. The windows of unfinished frames (the same list in every process: made from the same store)."""
        windows = [WindowItem(tuple(w)) for w in windows_of(self.todo, self.window)]
        n = len(self.feats)
        self.bar = tqdm(
            total=n, initial=n - len(self.todo), desc="video frames", unit="frame", disable=not self.progress
        )
        return windows

    @staticmethod
    def key(record: Mapping) -> tuple:
        return (record["frame"],)

    def keys(self, item: WindowItem) -> list[tuple]:
        return [(self.frame_ids[p],) for p in item.positions]

    def _invert(self, positions: Sequence[int]):
        """The window's reconstructions (8-bit), warm-started and anchored on the previous frame when asked."""
        feats, first, device = self.feats, positions[0], self.device
        images, done = self.images, self.frame_done
        previous = images[first - 1 : first] if first > 0 and done[first - 1] else None
        batch = feats[positions[0] : positions[-1] + 1]
        kwargs: dict = {}
        if self.warm_start and previous is not None:
            kwargs["init"] = previous.expand(len(positions), -1, -1, -1).to(device)
        drop = 0
        if previous is not None and self.boundary == "anchor":
            kwargs["anchor"] = previous.to(device)
        elif previous is not None and self.boundary == "overlap":
            batch, drop = torch.cat([feats[first - 1 : first], batch]), 1
            if "init" in kwargs:
                kwargs["init"] = torch.cat([previous.to(device), kwargs["init"]])
        generator = torch.Generator().manual_seed(self.seed * 100_000 + first)
        batch = FeatureSet(batch, self.target.name, self.layer, self.size)  # the layer, for multi-layer targets
        out = self.inverter.invert(batch, self.size, generator=generator, progress=self.progress, **kwargs)
        return out, quantize_8bit(out.images[drop:])

    def records(self, item: WindowItem) -> Iterator[dict]:
        """Inverts the window; 4. writes each frame (atomic PNG), then gives its record."""
        positions, references, images, done = item.positions, self.references, self.images, self.frame_done
        out, recon = self._invert(positions)
        window_feats = self.feats[positions[0] : positions[-1] + 1].to(self.device)
        residual = feature_residual(self.target, recon.to(self.device), window_feats, self.layer).cpu()
        self.scores = {}
        if references is not None:
            ref = references[list(positions)]
            self.scores = {"psnr": psnr(recon, ref), "ssim": ssim(recon, ref)}
        for i, p in enumerate(positions):
            images[p] = recon[i]
            if self.store is not None:
                save_image(recon[i], frame_path(self.store.folder, self.frame_ids[p]))
            prev_image = images[p - 1] if p > 0 and done[p - 1] else None
            record = {
                "position": p,
                "frame": self.frame_ids[p],
                "file": f"frames/frame_{self.frame_ids[p]:05d}.png",
                "window": positions[0],
                **{k: float(v[i]) for k, v in self.scores.items()},
                "feature_residual": float(residual[i]),
                "temporal_diff": None if prev_image is None else mean_abs_diff(recon[i], prev_image),
                "source_temporal_diff": None
                if prev_image is None or references is None
                else mean_abs_diff(references[p], references[p - 1]),
                "seconds": out.seconds / len(positions),
                "skipped_steps": int(out.info.get("skipped_steps", 0)),
            }
            yield record
            self.frame_records[p] = record
            done[p] = True

    def after(self, item: WindowItem) -> None:
        self.computed.extend(item.positions)
        self.save_metrics()
        if "psnr" in self.scores:
            self.bar.set_postfix(psnr=f"{self.scores['psnr'].mean():.2f}", refresh=False)
        self.bar.update(len(item.positions))

    # ------------------------------------------------------------------ the output
    def output(self, seconds: float) -> VideoInversionOutput:
        self.bar.close()
        computed = self.computed
        if self.split:  # the other processes' windows: read back from the store once all are written
            self.load_finished()
            computed = [p for p in self.todo if self.frame_done[p]]  # by all processes
        self.save_metrics()
        ordered = self.ordered()
        summary = {**video_summary(self.images, self.references, self.frame_done, ordered), "settings": self.manifest}
        return VideoInversionOutput(self.images, self.frame_done, ordered, summary, computed, seconds)
