"""Training the black-box inverters on (image, feature) pairs, with accelerate.

One loop serves both learned maps:

* ``train_decoder``: :class:`~diffinv.models.UpconvNet`, features -> pixels,
  pixel MSE (Dosovitskiy & Brox), optionally plus a feature loss;
* ``train_mapper``: :class:`~diffinv.models.FeatureMapper`, features -> diffusion latent,
  MSE to the VAE encoding, optionally plus pixel and feature losses through the decoder.

Training images are photos and video frames held in memory; every step draws random
crops (random scale, random horizontal flip) and computes the target's features on the
fly, so the network never sees the same pair twice. Validation scores PSNR/SSIM on
held-out images (other photos, another clip, or the tail of each training source).

The output folder is a run store (:mod:`diffinv.jobs.store`): ``manifest.json`` with the
settings that define the trained model, the model itself (``save_pretrained``: ``config.json``
+ safetensors), ``training_log.json``, ``loss_curve.png`` and ``checkpoints/``. Training again
into the same folder with the same settings resumes from the latest checkpoint (and reproduces
the uninterrupted run); other settings are refused with a :class:`~diffinv.jobs.store.RunSettingsError`
that lists each change; ``overwrite=True`` starts afresh. A checkpoint (accelerate
``save_state``: weights, optimizer, LR schedule, RNG states, step, the crop generator and the
history) is written to a temporary folder and renamed, so an interrupted run never leaves a
half-written one.

Data-parallel training (``accelerate launch`` / ``torchrun``, one process per GPU, or gloo on CPU):

* ``batch_size`` is the *global* batch: the crops of one optimizer step summed over the N
  processes; it must be divisible by N. Every process holds the same seeded crop generator,
  draws the parameters of the whole global batch and builds only its slice
  ``[rank*B/N, (rank+1)*B/N)``, so N processes train on exactly the crops of one process with
  the same ``batch_size``; DDP averages the gradients, so the update is the same (up to the
  order of float reductions), and a run's results do not depend on N.
* ``learning_rate`` is the rate of one step of the global batch, used as given (no scaling
  with N): the same ``batch_size`` and ``learning_rate`` give the same run whatever N.
* The logged loss is the mean over the global batch (the per-process means averaged across
  processes); a step is skipped on every process when that mean is not finite. Only the main
  process writes the model, ``training_log.json`` and ``loss_curve.png``, and validates (on
  the whole validation set, with the unwrapped model; the others go on to the next step).
  ``images_per_second`` counts the crops of all processes.
* The number of processes is not a setting: a run started with N processes resumes with any
  number (same ``batch_size``). The checkpoint's crop generator (saved by the main process)
  is the only random state the loop uses; accelerate's per-process RNG files of another
  process count are ignored.

Example:
    >>> config = TrainConfig(out="decoders/blocks.2", layer="blocks.2", images=["photos/"],
    ...                      videos=["clip.mp4"], val_samples=["chelsea", "coffee"], max_steps=2000)
    >>> result = train_decoder(config)
    >>> result.val_psnr
    18.3
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..defenses import parse_defense
from ..io import VideoFrames, _fit, fingerprint_path, from_array, image_groups, load_image, save_figure, write_json
from ..losses import mse, normalized_mse
from ..metrics import psnr, ssim
from .. import models, pipelines  # their learned models import diffusers when first used
from ..targets import TargetNetwork
from .store import RunStore

__all__ = [
    "ImageDataset",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "load_training_data",
    "plot_loss_curve",
    "read_video_frames",
    "train_decoder",
    "train_mapper",
]

CHECKPOINT_PREFIX = "checkpoint-"


def _outputs() -> tuple[str, ...]:
    """What a training run writes into its folder besides the manifest (``overwrite`` removes them)."""
    from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    return CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, "training_log.json", "loss_curve.png", "checkpoints", ".model.tmp"


# ---------------------------------------------------------------------- data
def read_video_frames(
    path: str | os.PathLike,
    *,
    max_frames: int | None = None,
    stride: int = 1,
    max_side: int | None = None,
) -> list[torch.Tensor]:
    """uint8 ``(3, H, W)`` frames of a video (every ``stride``-th, at most ``max_frames``), each
    downscaled as it is decoded so that its shorter side is at most ``max_side`` (saves memory).

    Raises:
        FileNotFoundError, ValueError: as :class:`~diffinv.io.VideoFrames`; or the file has no frames.
    """
    stop = None if max_frames is None else max_frames * stride
    frames = [_shrink(torch.from_numpy(array).permute(2, 0, 1), max_side)
              for _, array in VideoFrames(path, stop=stop, stride=stride)]
    if not frames:
        raise ValueError(f"video file {str(path)!r} has no frames.")
    return frames


def _shrink(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """uint8 (3, H, W) -> shorter side at most ``max_side`` (uint8, contiguous)."""
    h, w = image.shape[-2:]
    if max_side is None or min(h, w) <= max_side:
        return image.contiguous()
    scale = max_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8).contiguous()


class ImageDataset(torch.utils.data.Dataset):
    """Photos and video frames in memory (uint8), served as random crops or whole images.

    Args:
        items: uint8 ``(3, H, W)`` tensors of any sizes.
        names: one name per item.

    ``dataset[i]`` is item ``i`` in [0, 1]; :meth:`random_crops` draws a training batch;
    :meth:`fixed` gives every item resized and center-cropped (validation).
    """

    def __init__(self, items: Sequence[torch.Tensor], names: Sequence[str]):
        if not items:
            raise ValueError("the dataset is empty: no images or video frames were given.")
        if len(items) != len(names):
            raise ValueError(f"{len(items)} items but {len(names)} names.")
        self.items, self.names = list(items), list(names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index].float() / 255.0

    def random_crops(
        self,
        n: int,
        size: int,
        generator: torch.Generator,
        *,
        min_scale: float = 0.5,
        flip: bool = True,
        keep: slice | None = None,
    ) -> torch.Tensor:
        """``n`` random square crops, resized to ``size`` and randomly flipped: ``(n, 3, size, size)``.

        The crop side is uniform in ``[min_scale, 1]`` times the item's shorter side, so the
        network sees each source at several scales. With ``keep`` (a slice of ``range(n)``), the
        random draws of all ``n`` crops are made (the generator advances as for ``n``) but only
        the kept crops are built and returned: one process's share of a global batch.
        """
        kept = set(range(n)[keep]) if keep is not None else None
        crops = []
        for index in range(n):
            item = self.items[int(torch.randint(len(self.items), (1,), generator=generator))]
            h, w = item.shape[-2:]
            scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=generator))
            side = max(2, int(min(h, w) * scale))
            top = int(torch.randint(h - side + 1, (1,), generator=generator))
            left = int(torch.randint(w - side + 1, (1,), generator=generator))
            flipped = flip and float(torch.rand((), generator=generator)) < 0.5
            if kept is not None and index not in kept:
                continue
            crop = item[:, top : top + side, left : left + side].float()[None] / 255.0
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            if flipped:
                crop = crop.flip(-1)
            crops.append(crop.clamp(0, 1))
        if not crops:
            return torch.empty(0, 3, size, size)
        return torch.stack(crops)

    def fixed(self, size: int) -> torch.Tensor:
        """Every item resized (shorter side) and center-cropped to ``size``: ``(N, 3, size, size)``."""
        return torch.stack([_fit(self[i], size) for i in range(len(self))])


def _load_sources(images=(), videos=(), samples=(), *, max_side=None, max_frames=None, stride=1):
    """-> list of (group name, items, names) per source, in a stable order."""
    groups = []
    for files in image_groups(images):
        items = [_shrink((load_image(f) * 255).round().to(torch.uint8), max_side) for f in files]
        groups.append((str(files[0].parent), items, [str(f) for f in files]))
    for video in videos:
        frames = read_video_frames(video, max_frames=max_frames, stride=stride, max_side=max_side)
        groups.append((str(video), frames, [f"{Path(video).name}#{i * stride}" for i in range(len(frames))]))
    if samples:
        try:
            import skimage.data
        except ImportError as err:
            raise ImportError("`val_samples`/`samples` need scikit-image (`pip install scikit-image`).") from err
        items, names = [], []
        for name in samples:
            loader = getattr(skimage.data, name, None)
            if loader is None:
                raise ValueError(f"`{name}` is not an image of skimage.data.")
            items.append(_shrink((from_array(loader()) * 255).round().to(torch.uint8), max_side))
            names.append(f"skimage:{name}")
        groups.append(("skimage", items, names))
    return groups


def load_training_data(config: "TrainConfig") -> tuple[ImageDataset, ImageDataset | None]:
    """The training set and the validation set of a :class:`TrainConfig`.

    Without explicit validation sources, the last ``val_fraction`` of every training
    source (folder or clip, at least one item of those with two or more) is held out —
    the tail of a clip rather than random frames, so that near-duplicate neighbours of a
    validation frame are not in the training set.

    Raises:
        ValueError: no training source, an empty folder, an unreadable video.
    """
    if not (config.images or config.videos):
        raise ValueError("no training data: pass `images` (image files or folders) and/or `videos`.")
    max_side = 2 * config.size
    train = _load_sources(config.images, config.videos, max_side=max_side, max_frames=config.max_frames,
                          stride=config.stride)
    explicit_val = config.val_images or config.val_videos or config.val_samples
    items, names, val_items, val_names = [], [], [], []
    for _, group_items, group_names in train:
        hold = 0
        if not explicit_val and config.val_fraction > 0 and len(group_items) >= 2:
            hold = max(1, math.ceil(config.val_fraction * len(group_items)))
        cut = len(group_items) - hold
        items += group_items[:cut]
        names += group_names[:cut]
        val_items += group_items[cut:]
        val_names += group_names[cut:]
    if explicit_val:
        val_frames = config.max_val_frames
        for _, group_items, group_names in _load_sources(config.val_images, config.val_videos, config.val_samples,
                                                         max_side=max_side, max_frames=val_frames,
                                                         stride=max(1, config.val_stride)):
            val_items += group_items
            val_names += group_names
    train_set = ImageDataset(items, names)
    return train_set, (ImageDataset(val_items, val_names) if val_items else None)


# ---------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything a training run needs (the command-line options of ``train-decoder`` / ``train-mapper``).

    Every field defines the trained model and is recorded in the run's manifest, except ``out``,
    ``overwrite``, ``device``, ``progress`` and the intervals ``checkpoint_every``,
    ``keep_checkpoints`` and ``val_every`` (``mixed_precision`` is recorded as resolved, the
    target by its weights fingerprint, a ``model`` folder by its fingerprint, the training data
    also by a fingerprint of its pixels).

    Attributes:
        out: output folder, a run store (the trained model, log, loss curve, checkpoints).
        layer: the target layer whose features are inverted.
        target, weights: the target network (``TargetNetwork.from_name``): ``weights`` is
            ``"default"``, ``"random:SEED"`` or a state-dict file.
        images: image files or folders; videos: video files (all frames, see
            ``max_frames`` / ``stride``).
        val_images, val_videos, val_samples: held-out images (files/folders, clips,
            ``skimage.data`` names); without them ``val_fraction`` of each source is held out.
        size: training and validation images are ``size x size`` (the target's input size).
        batch_size, max_steps, learning_rate, weight_decay, warmup_steps: optimization
            (AdamW, cosine schedule with warmup, gradient clipping at 1). ``batch_size`` is the
            global batch (summed over the processes of a distributed launch, divisible by their
            number) and ``learning_rate`` the rate for it, not scaled with the process count.
        checkpoint_every, keep_checkpoints, val_every: checkpoint and validation intervals.
        overwrite: start a fresh run even if ``out`` holds one with other settings (its model,
            log and checkpoints are deleted). Without it, a run with the same settings is
            resumed from its latest checkpoint and one with other settings is refused.
        mixed_precision: ``"auto"`` (bf16/fp16 on GPU, none on CPU), ``"no"``, ``"fp16"``, ``"bf16"``.
        device: ``"cpu"`` forces the CPU, ``"cuda:N"`` picks a GPU of a single-process run;
            otherwise accelerate picks the GPU when there is one (one per process).
        hidden_channels: width of the decoder / mapper.
        min_channels: decoder only, width of its full-resolution stages.
        feature_weight: weight of the feature loss ``nmse(target(x_hat), f)`` (both kinds).
        pixel_weight: mapper only, weight of the pixel MSE after VAE decoding.
        model: mapper only, the Stable Diffusion model whose VAE defines the latents.
        min_crop: smallest random crop, as a fraction of an item's shorter side.
        defense: a :mod:`diffinv.defenses` setting (``"noise:0.3"``) applied to the features the
            model learns from and is validated on (fresh noise/masks per step): the black-box
            attacker that knows the defense (``diffinv audit``). ``None``: the layer's features.
    """

    out: str
    layer: str
    kind: str = "decoder"
    target: str = "tf_efficientnet_lite0"
    weights: str | None = "default"
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    val_images: list[str] = field(default_factory=list)
    val_videos: list[str] = field(default_factory=list)
    val_samples: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    max_frames: int | None = None
    stride: int = 1
    max_val_frames: int | None = 16
    val_stride: int = 8
    size: int = 128
    batch_size: int = 16
    max_steps: int = 2000
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 250
    overwrite: bool = False
    seed: int = 0
    mixed_precision: str = "auto"
    device: str | None = None
    hidden_channels: int = 128
    min_channels: int = 32
    feature_weight: float = 0.0
    pixel_weight: float = 0.0
    model: str | None = None
    min_crop: float = 0.5
    progress: bool = True
    defense: str | None = None


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        out: the output folder (loadable with ``from_pretrained``).
        step: the last step trained.
        val_psnr, val_ssim: mean over the validation images at the end (None without them).
        seconds: training wall time of this run (excluding data loading and validation).
        images_per_second: training throughput (crops per second, forward + backward; under a
            distributed launch, the crops of all processes per second of this process).
        log: the content of ``training_log.json``.
        main_process: whether this is the main process of the launch (the others do not validate,
            so their ``val_psnr``/``val_ssim`` are None; always True for a single process).
    """

    out: Path
    step: int
    val_psnr: float | None
    val_ssim: float | None
    seconds: float
    images_per_second: float
    log: dict
    main_process: bool = True


class _TrainerState:
    """Step, crop generator and history: saved in every checkpoint through accelerate."""

    def __init__(self, seed: int):
        self.step, self.skipped, self.seconds, self.images = 0, 0, 0.0, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.losses: list[float] = []
        self.validation: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped, "seconds": self.seconds, "images": self.images,
                "generator": self.generator.get_state(), "losses": list(self.losses),
                "validation": list(self.validation)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.seconds, self.images = float(state["seconds"]), int(state["images"])
        self.generator.set_state(state["generator"])
        self.losses, self.validation = list(state["losses"]), list(state["validation"])


# ---------------------------------------------------------------------- the two tasks
class _DecoderTask:
    """Features -> pixels (UpconvNet)."""

    kind = "decoder"
    unused = ("model", "pixel_weight")  # TrainConfig fields a decoder ignores

    def __init__(self, config: TrainConfig, target: TargetNetwork, device):
        self.config, self.target = config, target

    def settings(self) -> dict:
        return {}

    def build(self):
        return models.UpconvNet.for_target(self.target, self.config.layer, (self.config.size,) * 2,
                                    hidden_channels=self.config.hidden_channels,
                                    min_channels=self.config.min_channels)

    def loss(self, model, images, feats):
        pred = model(feats)
        parts = {"pixel": mse(pred, images).mean()}
        if self.config.feature_weight > 0:
            parts["feature"] = self.config.feature_weight * normalized_mse(
                self.target.feature(pred, self.config.layer), feats).mean()
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return model(feats).float().clamp(0, 1)


class _MapperTask:
    """Features -> diffusion latent (FeatureMapper), supervised by the VAE encoding."""

    kind = "mapper"
    unused = ("min_channels",)

    def __init__(self, config: TrainConfig, target: TargetNetwork, device):
        if not config.model:
            raise ValueError("`model` is required to train a mapper: the Stable Diffusion model whose VAE "
                             "defines the latent space (a diffusers folder, or 'tiny' for random weights).")
        self.config, self.target = config, target
        self.vae = pipelines.load_vae(config.model).to(device)

    def settings(self) -> dict:
        """The model folder's fingerprint (a re-trained or replaced VAE defines another latent space)."""
        path = Path(self.config.model)
        return {"model_fingerprint": fingerprint_path(path) if path.exists() else None}

    def build(self):
        return models.FeatureMapper.for_target(self.target, self.config.layer, (self.config.size,) * 2, self.vae,
                                        model=self.config.model, hidden_channels=self.config.hidden_channels)

    def loss(self, model, images, feats):
        with torch.no_grad():
            latents = models.encode_latents(self.vae, images).float()
        pred = model(feats)
        parts = {"latent": mse(pred, latents).mean()}
        if self.config.pixel_weight > 0 or self.config.feature_weight > 0:
            decoded = models.decode_latents(self.vae, pred)
            if self.config.pixel_weight > 0:
                parts["pixel"] = self.config.pixel_weight * mse(decoded, images).mean()
            if self.config.feature_weight > 0:
                parts["feature"] = self.config.feature_weight * normalized_mse(
                    self.target.feature(decoded, self.config.layer), feats).mean()
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return models.decode_latents(self.vae, model(feats).float()).clamp(0, 1)


# ---------------------------------------------------------------------- checkpoints
def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The checkpoint folder with the highest step in ``out/checkpoints`` (complete ones only)."""
    folder = Path(out) / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def _save_checkpoint(accelerator, out: Path, state: _TrainerState, keep: int) -> Path:
    """``save_state`` into a temporary folder, renamed when complete; keeps the ``keep`` latest."""
    folder = out / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{state.step:07d}"
    tmp = folder / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its RNG state into tmp before it is renamed
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", {"step": state.step})  # marks the checkpoint complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted((p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
        for old in complete[: max(0, len(complete) - max(1, keep))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _save_model(model, out: Path) -> None:
    """``save_pretrained`` into a temporary folder, then each file is renamed into ``out``."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for file in tmp.iterdir():
        os.replace(file, out / file.name)
    tmp.rmdir()


def plot_loss_curve(losses: Sequence[float], validation: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training loss (raw and smoothed, log scale) and validation PSNR per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
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
        ax2.plot([v["step"] for v in validation], [v["psnr"] for v in validation], "o-", color="tab:red",
                 label="validation PSNR")
        ax2.set_ylabel("validation PSNR (dB)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- the loop
@torch.no_grad()
def _validate(task, model, target: TargetNetwork, images: torch.Tensor, layer: str, device, batch_size: int,
              defense=None) -> dict:
    model.eval()
    recon = []
    generator = torch.Generator().manual_seed(0)  # the same defended validation features every time
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        feats = target.feature(chunk, layer)
        if defense:
            feats = defense(feats, generator)
        recon.append(task.reconstruct(model, feats).cpu())
    model.train()
    recon = torch.cat(recon)
    return {"psnr": float(psnr(recon, images).mean()), "ssim": float(ssim(recon, images).mean()),
            "mse": float(mse(recon, images).mean())}


def _mixed_precision(choice: str, device: torch.device) -> str:
    if choice not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"`mixed_precision` {choice!r} is not supported; expected 'auto', 'no', 'fp16' or 'bf16'.")
    if choice != "auto":
        return choice
    if device.type == "cpu" or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _device(choice: str | None) -> torch.device:
    """``TrainConfig.device`` -> a device (``None``: CUDA when available)."""
    if not choice:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise ValueError(f"`device` {choice!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'.") from None


# Fields of TrainConfig that do not define the trained model (not in the run's manifest).
NOT_SETTINGS = ("out", "kind", "overwrite", "device", "progress", "checkpoint_every", "keep_checkpoints", "val_every")


def _data_fingerprint(*datasets: ImageDataset | None) -> str:
    """A 16-hex-digit fingerprint of the pixels of the datasets, in order (same sources, other content: another one)."""
    digest = hashlib.blake2b(digest_size=8)
    for dataset in datasets:
        digest.update(b"|")
        for item in [] if dataset is None else dataset.items:
            digest.update(f"{tuple(item.shape)}".encode())
            digest.update(item.contiguous().numpy())
    return digest.hexdigest()


def _settings(config: TrainConfig, task, target: TargetNetwork, accelerator, train_set, val_set) -> dict:
    """The settings that define the trained model: the run's manifest (see :class:`TrainConfig`)."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_SETTINGS + task.unused}
    del settings["weights"]  # recorded with the target, with their fingerprint
    # not the number of processes: the global batch defines the run, which resumes with any number
    settings.update(target=target.identity(), mixed_precision=accelerator.mixed_precision,
                    data_fingerprint=_data_fingerprint(train_set, val_set))
    settings.update(task.settings())
    if settings.get("defense") is None:
        settings.pop("defense", None)  # runs without a defense keep the manifests they had before the field
    return settings


def _train(config: TrainConfig, task_cls) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    # 1. Check inputs
    config.kind = task_cls.kind
    if config.max_steps < 1 or config.batch_size < 1:
        raise ValueError(f"`max_steps` and `batch_size` must be positive, got {config.max_steps} and {config.batch_size}.")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out` {str(out)!r} is an existing file; expected an output folder.")
    device = _device(config.device)
    mixed_precision = _mixed_precision(config.mixed_precision, device)
    defense = parse_defense(config.defense) if config.defense is not None else None

    # 2. Accelerator (one process, or one of a distributed launch): the global batch is split evenly
    if device.type == "cuda" and device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(device)  # accelerate uses the current GPU of a single process
    # split_batches: the batch is the global one, so the LR schedule advances one step per optimizer
    # step whatever the number of processes (accelerate otherwise steps it once per process)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu",
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    device = accelerator.device
    processes, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % processes:
        raise ValueError(f"`batch_size` {config.batch_size} is the global batch (crops per step summed over the "
                         f"processes) and must be divisible by the number of processes, {processes}; choose e.g. "
                         f"{processes * max(1, round(config.batch_size / processes))}.")
    local = slice(rank * config.batch_size // processes, (rank + 1) * config.batch_size // processes)

    # 3. Data (before the run store: a source that fails to load leaves no run behind), target, task
    train_set, val_set = load_training_data(config)
    set_seed(config.seed)
    target = TargetNetwork.from_name(config.target, config.layer, weights=config.weights,
                                     input_size=(config.size, config.size)).to(device)
    task = task_cls(config, target, device)
    val_images = val_set.fixed(config.size) if val_set is not None else None

    # 4. Run store: the same settings resume from the latest checkpoint, other settings are refused
    #    (every process checks the folder, the main one writes the manifest, the others wait for it)
    RunStore(out, f"train-{task.kind}", _settings(config, task, target, accelerator, train_set, val_set),
             overwrite=config.overwrite, outputs=_outputs(), state=accelerator.state)
    accelerator.wait_for_everyone()
    checkpoint = latest_checkpoint(out)

    # 5. Model, feature statistics, optimizer, resumed state
    model = task.build().train()
    stats_generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        sample = torch.cat([target.feature(train_set.random_crops(config.batch_size, config.size, stats_generator,
                                                                  min_scale=config.min_crop).to(device), config.layer)
                            for _ in range(max(1, 64 // config.batch_size))])
        if defense:
            sample = defense(sample, stats_generator)
    model.set_feature_stats(sample.cpu())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(config.warmup_steps, config.max_steps),
                                 num_training_steps=config.max_steps)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state = _TrainerState(config.seed)  # the same crop generator in every process: each builds its slice
    accelerator.register_for_checkpointing(state)
    if checkpoint is not None:
        # accelerate's RNG file of this process is missing when the checkpoint was written by fewer
        # processes: it then keeps the seeded state (the loop draws from the crop generator only)
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    start_step = state.step

    def finish_interval():
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            _save_model(unwrapped, out)
            write_json(out / "training_log.json", _log(config, state, train_set, val_set, start_step))
            plot_loss_curve(state.losses, state.validation, out / "loss_curve.png",
                            f"{task.kind} {config.target}.{config.layer} @ {config.size}px")

    # 6. Loop
    bar = tqdm(total=config.max_steps, initial=start_step, desc=f"train-{task.kind} {config.layer}",
               disable=not (config.progress and accelerator.is_local_main_process))
    while state.step < config.max_steps:
        tic = time.perf_counter()
        images = train_set.random_crops(config.batch_size, config.size, state.generator,
                                        min_scale=config.min_crop, keep=local).to(device)
        with torch.no_grad():
            feats = target.feature(images, config.layer).float()
            if defense:
                feats = defense(feats, state.generator)
        with accelerator.autocast():
            loss, parts = task.loss(model, images, feats)
        # the loss of the global batch (equal slices: the mean of the per-process means), the same
        # in every process, so that all of them skip a non-finite step together
        global_loss = accelerator.reduce(loss.detach().float().reshape(1), reduction="mean")[0]
        if torch.isfinite(global_loss):
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
        else:
            state.skipped += 1
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.losses.append(float(global_loss))
        state.images += config.batch_size
        state.seconds += time.perf_counter() - tic
        bar.update(1)
        postfix = {"loss": f"{state.losses[-1]:.4g}"}
        if (val_images is not None and accelerator.is_main_process
                and (state.step % config.val_every == 0 or state.step == config.max_steps)):
            # the unwrapped model: no collective call, the other processes go on to the next step
            scores = _validate(task, accelerator.unwrap_model(model), target, val_images, config.layer, device,
                               config.batch_size, defense)
            state.validation.append({"step": state.step, **scores})
            postfix["val_psnr"] = f"{scores['psnr']:.2f}"
        bar.set_postfix(postfix)
        if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
            _save_checkpoint(accelerator, out, state, config.keep_checkpoints)
            finish_interval()
    bar.close()
    if start_step >= config.max_steps:  # nothing left to train: still leave a model and a log
        finish_interval()
    log = _log(config, state, train_set, val_set, start_step)
    final_val = state.validation[-1] if state.validation else {}
    return TrainResult(out=out, step=state.step, val_psnr=final_val.get("psnr"), val_ssim=final_val.get("ssim"),
                       seconds=state.seconds, images_per_second=log["images_per_second"], log=log,
                       main_process=accelerator.is_main_process)


def _log(config: TrainConfig, state: _TrainerState, train_set, val_set, start_step: int) -> dict:
    return {
        "config": asdict(config),
        "step": state.step,
        "resumed_from": start_step or None,
        "train_items": len(train_set),
        "val_items": [] if val_set is None else val_set.names,
        "skipped_steps": state.skipped,
        "train_seconds": state.seconds,
        "images_per_second": state.images / state.seconds if state.seconds else 0.0,
        "losses": state.losses,
        "validation": state.validation,
        "torch_threads": torch.get_num_threads(),
    }


def train_decoder(config: TrainConfig) -> TrainResult:
    """Trains an :class:`~diffinv.models.UpconvNet` for ``config.layer``; see :class:`TrainConfig`."""
    return _train(config, _DecoderTask)


def train_mapper(config: TrainConfig) -> TrainResult:
    """Trains a :class:`~diffinv.models.FeatureMapper` for ``config.layer`` into ``config.model``'s latent space."""
    return _train(config, _MapperTask)
