"""Video: per-clip features, and windowed inversion with temporal smoothing.

The frames of a clip are inverted in *windows* of a few consecutive frames, each window
one batch. With ``temporal_weight`` λ > 0 the inverter adds ``λ·Σ_t ‖v_t − v_{t−1}‖²/d``
over the window's temporal variables (see :func:`diffinv.losses.temporal_smoothness`);
the next window is warm-started from the previous window's last reconstruction, and
that reconstruction is also a fixed *anchor* in front of the window's temporal term, so
there is no jump at window boundaries. ``temporal_weight = 0`` means independent frames
(no smoothing, no warm start, unless asked for).

What is smoothed, per method:

* pixel: the rendered images ``sigmoid(logits)`` — a one-to-one function of the
  optimized logits, so smoothing them is smoothing the optimized variables, measured
  in image space (logits would over-weight saturated pixels).
* dip: the optimized variables are the generators' weights, which have no frame-to-frame
  correspondence (N independent generators); the practical choice is to smooth the
  generators' output images. Warm start: a short pre-fit of the fresh generators to the
  previous reconstruction (``DIPInverter(init_iterations=...)``).
* any other :class:`~diffinv.inverters.Inverter`: what its config declares
  (:mod:`diffinv.inverters.config`): a ``temporal_weight`` field (λ), ``accepts_init``
  (``invert(init=images)``: the warm start) and ``accepts_anchor`` (``invert(anchor=image)``: the
  fixed anchor, an image ``(1, 3, H, W)`` in [0, 1]; an inverter that smooths latents may encode
  it). Without ``anchor`` the previous frame is re-inverted as the first frame of the next
  window (``boundary="overlap"``) and its new result is discarded.

With an output folder, :func:`invert_video` is a *run store* (:mod:`diffinv.jobs.store`):
``manifest.json`` holds every setting that defines the results, every frame is written as a
PNG as soon as its window finishes and then appended as one record to ``records.jsonl``, and
``metrics.json`` (derived from the records) is rewritten atomically after each window. An
interrupted run keeps everything finished; running it again with the same settings continues
where it stopped, with other settings it is refused (``overwrite=True`` starts afresh).

Several clips go into one output folder as one run folder per clip (``OUT/<name>/``, each a run
store of its own, so each is resumed or refused on its own), and :func:`write_clips_summary`
tabulates them in ``OUT/summary.json``. Under a multi-process launch (or with independent commands
on the same folder) each clip is claimed by one process (:func:`~diffinv.jobs.items.claimed`); no two
processes share a clip folder, so each opens its stores alone. One clip of independent windows (λ = 0, no warm
start) can instead split its windows across the processes (``invert_video(state=...)``).

The windows are the work items of the job protocol (:class:`WindowItem`; :class:`VideoJob` turns one into
its frames' records), run by its runner (:func:`~diffinv.jobs.items.run_job`): in order in one process, or
claimed one at a time by the processes of a launch when they are independent.

Example:
    >>> clip = read_video(sample_video_path(), start=16, stop=32, size=128)
    >>> target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(128, 128))
    >>> features = extract_video_features(target, clip, "blocks.2")
    >>> out = invert_video(PixelInverter(target, temporal_weight=30.0), features,
    ...                    references=clip.frames, out_dir="video_out")
    >>> out.summary["temporal_consistency"], out.summary["source_temporal_consistency"]
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..features import FeatureSet, resolve_features
from ..inverters import Inverter
from ..io import VideoClip, load_image, pixels_fingerprint, save_image, write_json
from ..metrics import feature_residual, psnr, ssim, temporal_consistency
from ..targets import TargetNetwork
from .items import Job, run_job
from .store import RunStore

__all__ = [
    "VideoInversionOutput",
    "VideoJob",
    "WindowItem",
    "extract_video_features",
    "frame_path",
    "invert_video",
    "video_summary",
    "write_clips_summary",
]

METRICS_FILE = "metrics.json"
# Several clips in one output folder: one run folder per clip, and this table of them all.
SUMMARY_FILE = "summary.json"
# The per-clip figures that summary.json lists (means over the clip's finished frames; no timings,
# so that the same results give the same summary however many processes made them).
CLIP_FIGURES = (
    "frames",
    "frames_done",
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "feature_residual_mean",
    "temporal_consistency",
    "source_temporal_consistency",
    "temporal_ratio",
    "flicker",
)
# What a video run writes into its folder besides the store's manifest and records (the mp4s are
# written by the command and the examples); `overwrite=True` removes them.
OUTPUTS = ("frames", METRICS_FILE, "reconstruction.mp4", "side_by_side.mp4")


@torch.no_grad()
def extract_video_features(
    target: TargetNetwork,
    clip: VideoClip | torch.Tensor,
    layer: str | None = None,
    *,
    batch_size: int = 16,
    sources: Sequence[str] | None = None,
) -> FeatureSet:
    """The FeatureSet of every frame of a clip (``clip.frames`` or a ``(T, 3, H, W)`` tensor).

    Frames go through ``target`` in batches of ``batch_size``; sources are ``"clip.mp4#i"``.
    """
    frames = clip.frames if isinstance(clip, VideoClip) else clip
    if sources is None:
        sources = clip.names if isinstance(clip, VideoClip) else [f"frame_{i}" for i in range(len(frames))]
    device = target.mean.device
    parts = [
        FeatureSet.extract(target, frames[i : i + batch_size].to(device), layer)
        for i in range(0, len(frames), batch_size)
    ]
    first = parts[0]
    return FeatureSet(
        torch.cat([p.features for p in parts]),
        first.target,
        first.layer,
        first.input_size,
        first.preprocessing,
        list(sources),
    )


# ---------------------------------------------------------------------- metrics
def _quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG holds: metrics are computed on exactly the written frames."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


def _mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def _finite(value) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def video_summary(
    images: torch.Tensor,
    references: torch.Tensor | None,
    done: Sequence[bool] | None = None,
    records: Sequence[Mapping] | None = None,
) -> dict:
    """Means over finished frames, and the temporal-consistency figures.

    * ``temporal_consistency``: mean ``|x̂_t − x̂_{t−1}|`` over consecutive reconstructed
      frames (lower = steadier); ``source_temporal_consistency`` the same for the source
      frames, and ``temporal_ratio`` their quotient (1 = as steady as the source).
    * ``flicker``: mean ``|(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})|`` — frame-to-frame change
      that the source does not have; it also counts motion that smoothing wiped out.

    Only pairs of consecutive frames that are both finished count. A record's value that is not a finite
    number (NaN, infinite, a word) is left out of the mean and counted: ``KEY_left_out``.
    """
    done = list(done) if done is not None else [True] * len(images)
    pairs = [t for t in range(1, len(images)) if done[t] and done[t - 1]]
    summary: dict = {"frames_done": int(sum(done)), "frames": len(images)}
    for key in ("psnr", "ssim", "feature_residual", "seconds"):
        given = [r[key] for r in (records or []) if r.get(key) is not None]
        values = [v for v in map(_finite, given) if v is not None]
        if len(values) < len(given):
            summary[f"{key}_left_out"] = len(given) - len(values)
            warnings.warn(
                f"{len(given) - len(values)} frame record(s) with a {key} that is not a finite number "
                f"(NaN, infinite or not a number) left out of its mean.",
                stacklevel=2,
            )
        if values:
            mean = sum(values) / len(values)
            summary[f"{key}_mean"] = mean
            summary[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if pairs:
        idx = torch.tensor(pairs)
        d_rec = images[idx] - images[idx - 1]
        summary["temporal_consistency"] = temporal_consistency(images, pairs)
        if references is not None:
            d_src = references[idx].float() - references[idx - 1].float()
            summary["source_temporal_consistency"] = temporal_consistency(references, pairs)
            source = max(summary["source_temporal_consistency"], 1e-12)
            summary["temporal_ratio"] = summary["temporal_consistency"] / source
            summary["flicker"] = (d_rec - d_src).abs().mean().item()
    return summary


# ---------------------------------------------------------------------- windowed inversion
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


def frame_path(out_dir: str | os.PathLike, frame: int) -> Path:
    """Where :func:`invert_video` writes the reconstruction of clip frame number ``frame``."""
    return Path(out_dir) / "frames" / f"frame_{frame:05d}.png"


def _frame_image(store: RunStore, record: Mapping, size: Sequence[int]) -> torch.Tensor | None:
    """The PNG of a frame record when it reads back at ``size`` (the frame is finished), else ``None``."""
    file = frame_path(store.folder, record["frame"])
    if not file.is_file():
        return None  # the PNG never made it (or was removed): recompute
    try:
        image = load_image(file, max_pixels=size[0] * size[1])
    except (ValueError, OSError):
        return None
    return image if tuple(image.shape[-2:]) == tuple(size) else None


def _finished(store: RunStore, frame_ids: Sequence[int], size: Sequence[int]) -> dict[int, tuple[dict, torch.Tensor]]:
    """Finished frames of the run in ``store``: ``{position: (record, image)}``.

    A frame is finished when it has a record and its PNG reads back at ``size``; a frame
    recorded more than once (its PNG was lost and it was inverted again) counts with its
    last record.
    """
    position_of = {frame: p for p, frame in enumerate(frame_ids)}
    last = {}
    for record in store.records():
        if record.get("frame") in position_of:
            last[position_of[record["frame"]]] = record
    finished = {}
    for position, record in last.items():
        image = _frame_image(store, record, size)
        if image is not None:
            finished[position] = (record, image)
    return finished


def _windows(todo: Sequence[int], window: int) -> list[list[int]]:
    """Runs of consecutive positions, cut into pieces of at most ``window``."""
    runs: list[list[int]] = []
    for p in todo:
        if runs and p == runs[-1][-1] + 1 and len(runs[-1]) < window:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _with_temporal_diffs(
    p: int, record: dict, images: torch.Tensor, references: torch.Tensor | None, done: Sequence[bool]
) -> dict:
    """``record`` with its temporal differences filled in when the previous frame was not finished
    at the time it was written (it was inverted later, or by another process) but is now."""
    if record.get("temporal_diff") is not None or p == 0 or not (done[p] and done[p - 1]):
        return record
    record = {**record, "temporal_diff": _mean_abs_diff(images[p], images[p - 1])}
    if references is not None:
        record["source_temporal_diff"] = _mean_abs_diff(references[p], references[p - 1])
    return record


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


@dataclass(frozen=True)
class WindowItem:
    """One window of a clip: consecutive ``positions`` inverted as one batch."""

    positions: tuple[int, ...]

    def __str__(self) -> str:
        return f"frames {self.positions[0]}-{self.positions[-1]}"


def _video_options(
    inverter: Inverter, n: int, window, boundary: str, warm_start: bool | None, state
) -> tuple[float, bool, str, bool]:
    """``(temporal_weight, warm_start, boundary, split)`` as the run uses them (see :func:`invert_video`)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` must be a positive integer, got {window!r}.")
    if boundary not in ("auto", "anchor", "overlap", "none"):
        raise ValueError(f"`boundary` must be 'auto', 'anchor', 'overlap' or 'none', got {boundary!r}.")
    config = inverter.config
    weight = float(config.temporal_weight) if config.temporal else 0.0
    warm_start = weight > 0 if warm_start is None else bool(warm_start)
    if warm_start and not config.accepts_init:
        warnings.warn(f"{type(inverter).__name__}.invert takes no `init=`; frames are not warm-started.", stacklevel=4)
        warm_start = False
    if boundary == "auto":
        boundary = "anchor" if config.accepts_anchor else "overlap"
    if boundary == "anchor" and not config.accepts_anchor:
        raise ValueError(f"`boundary='anchor'` needs {type(inverter).__name__}.invert(anchor=...); use 'overlap'.")
    if weight <= 0:
        boundary = "none"
    split = state is not None and state.num_processes > 1
    if split and (weight > 0 or warm_start):
        raise ValueError(
            f"the windows of one clip can be split across processes only when they are independent "
            f"(temporal_weight 0 and no warm start), got temporal_weight={weight}, "
            f"warm_start={warm_start}: each window starts from the previous one's result."
        )
    return weight, warm_start, boundary, split


def _checked_references(references: torch.Tensor | None, n: int, size) -> torch.Tensor | None:
    if references is None:
        return None
    if len(references) != n:
        raise ValueError(
            f"`references` has {len(references)} frames but `features` has {n}; they must match one to one."
        )
    if tuple(references.shape[1:]) != (3, *size):
        raise ValueError(
            f"`references` must be (T, 3, {size[0]}, {size[1]}) like the features' input size, "
            f"got {tuple(references.shape)}."
        )
    return references.detach().float().cpu()


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
        self.weight, self.warm_start, self.boundary, self.split = _video_options(
            inverter, n, window, boundary, warm_start, state
        )
        self.references = _checked_references(references, n, self.size)
        self.frame_ids = list(range(n)) if frame_ids is None else [int(i) for i in frame_ids]
        if len(self.frame_ids) != n or len(set(self.frame_ids)) != n:
            raise ValueError(
                f"`frame_ids` must hold {n} distinct frame numbers, got {len(self.frame_ids)} "
                f"({len(set(self.frame_ids))} distinct)."
            )
        if self.split and out_dir is None:
            raise ValueError("splitting the windows of one clip across processes needs `out_dir`, where they meet.")
        self.device, self.progress = self.target.mean.device, progress
        self.manifest = {
            "target": self.target.identity(),
            "layer": self.layer,
            "method": inverter.name,
            "inverter": inverter.settings(),
            "temporal_weight": self.weight,
            "window": window,
            "warm_start": self.warm_start,
            "boundary": self.boundary,
            "image_size": list(self.size),
            "frames": self.frame_ids,
            "frames_fingerprint": None if self.references is None else pixels_fingerprint(self.references),
            "seed": seed,
            "device": self.device.type,
            **dict(settings or {}),
        }
        # 2. The run store, and what is finished already
        self.images = torch.zeros(n, 3, *self.size)
        self.frame_done = [False] * n
        self.frame_records: dict[int, dict] = {}
        self.store = None
        if out_dir is not None:
            self.store = RunStore(
                out_dir,
                "video",
                self.manifest,
                overwrite=overwrite,
                outputs=OUTPUTS,
                state=state if self.split else None,
            )
            self.manifest = self.store.settings  # as JSON gives it back
            self.load_finished()
        self.main = not self.split or state.is_main_process
        self.todo = [p for p in range(n) if not self.frame_done[p]]
        self.computed: list[int] = []
        self.bar = None

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
        for position, (record, image) in _finished(self.store, self.frame_ids, self.size).items():
            self.images[position], self.frame_done[position], self.frame_records[position] = image, True, record

    def finished_record(self, record: Mapping) -> bool:
        """Whether a record's frame is finished: its PNG reads back at the clip's size."""
        return record.get("frame") in self.frame_ids and _frame_image(self.store, record, self.size) is not None

    def save_metrics(self) -> None:
        if self.store is None or not self.main:
            return
        ordered = self.ordered()
        summary = video_summary(self.images, self.references, self.frame_done, ordered)
        write_json(self.store.folder / METRICS_FILE, {"config": self.manifest, "summary": summary, "frames": ordered})

    def ordered(self) -> list[dict]:
        """The finished frames' records in frame order, their temporal differences filled in."""
        return [
            _with_temporal_diffs(p, self.frame_records[p], self.images, self.references, self.frame_done)
            for p in sorted(self.frame_records)
        ]

    # ------------------------------------------------------------------ the items
    def items(self) -> list[WindowItem]:
        """3. The windows of unfinished frames (the same list in every process: made from the same store)."""
        windows = [WindowItem(tuple(w)) for w in _windows(self.todo, self.window)]
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
        return out, _quantize(out.images[drop:])

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
                "temporal_diff": None if prev_image is None else _mean_abs_diff(recon[i], prev_image),
                "source_temporal_diff": None
                if prev_image is None or references is None
                else _mean_abs_diff(references[p], references[p - 1]),
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


# ---------------------------------------------------------------------- several clips
def write_clips_summary(out_dir: str | os.PathLike, clips: Sequence[tuple[str, str]]) -> dict:
    """Writes ``out_dir/summary.json`` for the clips run into ``out_dir/<folder>/`` (atomic).

    Args:
        out_dir: the output folder of a several-clip run.
        clips: ``(clip, folder)`` per clip, in the order given: the clip as named on the command
            line and its run folder's name under ``out_dir``.

    Returns:
        ``{"clips": [{"clip", "folder", "source", "frames", "frames_done", "psnr_mean", ...}], "frames",
        "frames_done", "psnr_mean", "ssim_mean", "feature_residual_mean"}``: per clip the figures of
        its ``metrics.json`` summary (:data:`CLIP_FIGURES`; PSNR/SSIM and the temporal figures), and
        means over the finished frames of all clips. Built from the clip folders only, so it is the
        same whichever process (or how many) made them.
    """
    out_dir = Path(out_dir)
    rows, frames = [], []
    for clip, folder in clips:
        row: dict = {"clip": str(clip), "folder": str(folder)}
        path = out_dir / folder / METRICS_FILE
        if path.is_file():
            metrics = json.loads(path.read_text(encoding="utf-8"))
            row["source"] = metrics["config"].get("source")
            row.update({k: metrics["summary"][k] for k in CLIP_FIGURES if k in metrics["summary"]})
            frames += metrics["frames"]
        else:  # not run (yet): nothing finished
            row.update(frames_done=0)
        rows.append(row)
    summary: dict = {
        "clips": rows,
        "frames": sum(r.get("frames", 0) for r in rows),
        "frames_done": sum(r.get("frames_done", 0) for r in rows),
    }
    for key in ("psnr", "ssim", "feature_residual"):
        values = [r[key] for r in frames if r.get(key) is not None]
        if values:
            summary[f"{key}_mean"] = sum(values) / len(values)
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
