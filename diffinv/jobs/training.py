"""Training the black-box inverters on (image, feature) pairs, with accelerate.

One loop serves both learned maps:

* ``train_decoder``: :class:`~diffinv.models.UpconvNet`, features -> pixels,
  pixel MSE (Dosovitskiy & Brox), optionally plus a feature loss;
* ``train_mapper``: :class:`~diffinv.models.FeatureMapper`, features -> diffusion latent,
  MSE to the VAE encoding, optionally plus pixel and feature losses through the decoder.

Training images are photos and video frames held in memory (:mod:`diffinv.datasets`); every
step draws random crops (random scale, random horizontal flip) and computes the target's features
on the fly, so the network never sees the same pair twice. Validation scores PSNR/SSIM on
held-out images (other photos, another clip, or the tail of each training source).

The output folder is a run store (:mod:`diffinv.jobs.store`): ``manifest.json`` with the
settings that define the trained model, the model itself (``save_pretrained``: ``config.json``
+ safetensors), ``training_log.json``, ``loss_curve.png`` and ``checkpoints/``. Training again
into the same folder with the same settings resumes from the latest checkpoint (and reproduces
the uninterrupted run); other settings are refused with a :class:`~diffinv.jobs.store.RunSettingsError`
that lists each change; ``overwrite=True`` starts afresh. A checkpoint
(:mod:`diffinv.jobs.checkpoints`: weights, optimizer, LR schedule, RNG states, step, the crop
generator and the history, in safetensors, JSON and weights-only files: nothing is unpickled) is
written to a temporary folder and renamed, so an interrupted run never leaves a half-written one.
The caller's :class:`TrainConfig` is never changed.

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
  is the only random state the loop uses; the per-process RNG files of another process
  count are ignored.

Example:
    >>> config = TrainConfig(out="decoders/blocks.2", layer="blocks.2", images=["photos/"],
    ...                      videos=["clip.mp4"], val_samples=["chelsea", "coffee"], max_steps=2000)
    >>> result = train_decoder(config)
    >>> result.val_psnr
    18.3
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import datasets, models, pipelines  # their learned models import diffusers when first used
from ..datasets import ImageDataset
from ..defense_training import STATE_FILE, TrainedState
from ..defenses import parse_defense
from ..io import fingerprint_path, write_json
from ..losses import mse, normalized_mse
from ..metrics import psnr, ssim
from ..pipelines.definitions import ModelFilesNotFoundError, definition_dir
from ..resources import MemoryEstimate, check_memory, estimate_training
from ..targets import TargetNetwork
from .checkpoints import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint, save_model
from .report import plot_loss_curve
from .store import RunStore

__all__ = [
    "MIXED_PRECISION",
    "NOT_SETTINGS",
    "PER_MODEL",
    "TRAINED_KINDS",
    "TrainConfig",
    "TrainResult",
    "check_training_memory",
    "estimate_training_memory",
    "load_training_data",
    "template_settings",
    "train",
    "train_decoder",
    "train_mapper",
    "with_resolved_precision",
]


def _outputs() -> tuple[str, ...]:
    """What a training run writes into its folder besides the manifest (``overwrite`` removes them)."""
    from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    return CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, "training_log.json", "loss_curve.png", "checkpoints", ".model.tmp"


# ---------------------------------------------------------------------- data
def load_training_data(config: TrainConfig) -> tuple[ImageDataset, ImageDataset | None]:
    """The training set and the validation set of a :class:`TrainConfig`
    (:func:`~diffinv.datasets.load_training_data` of its data fields)."""
    return datasets.load_training_data(
        config.images,
        config.videos,
        size=config.size,
        val_images=config.val_images,
        val_videos=config.val_videos,
        val_samples=config.val_samples,
        val_fraction=config.val_fraction,
        max_frames=config.max_frames,
        stride=config.stride,
        max_val_frames=config.max_val_frames,
        val_stride=config.val_stride,
    )


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
        mixed_precision: ``"auto"`` (bf16/fp16 on GPU; on CPU bf16 where the processor has it natively,
            else none), ``"no"``, ``"fp16"``, ``"bf16"``.
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
    defense_state: str | None = None


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
        return models.UpconvNet.for_target(
            self.target,
            self.config.layer,
            (self.config.size,) * 2,
            hidden_channels=self.config.hidden_channels,
            min_channels=self.config.min_channels,
        )

    def loss(self, model, images, feats):
        pred = model(feats)
        parts = {"pixel": mse(pred, images).mean()}
        if self.config.feature_weight > 0:
            parts["feature"] = (
                self.config.feature_weight * normalized_mse(self.target.feature(pred, self.config.layer), feats).mean()
            )
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return model(feats).float().clamp(0, 1)

    @staticmethod
    def meta_model(config: TrainConfig, shape, size) -> tuple:
        """``(model, vae)`` for the memory estimate, built under ``torch.device("meta")``."""
        return models.UpconvNet(
            feature_shape=shape,
            image_size=size,
            hidden_channels=config.hidden_channels,
            min_channels=config.min_channels,
        ), None


class _MapperTask:
    """Features -> diffusion latent (FeatureMapper), supervised by the VAE encoding."""

    kind = "mapper"
    unused = ("min_channels",)

    def __init__(self, config: TrainConfig, target: TargetNetwork, device):
        if not config.model:
            raise ValueError(
                "`model` is required to train a mapper: the Stable Diffusion model whose VAE "
                "defines the latent space (a diffusers folder, or 'tiny' for random weights)."
            )
        self.config, self.target = config, target
        self.vae = pipelines.load_vae(config.model).to(device)

    def settings(self) -> dict:
        """The model folder's fingerprint (a re-trained or replaced VAE defines another latent space)."""
        path = Path(self.config.model)
        return {"model_fingerprint": fingerprint_path(path) if path.exists() else None}

    def build(self):
        return models.FeatureMapper.for_target(
            self.target,
            self.config.layer,
            (self.config.size,) * 2,
            self.vae,
            model=self.config.model,
            hidden_channels=self.config.hidden_channels,
        )

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
                parts["feature"] = (
                    self.config.feature_weight
                    * normalized_mse(self.target.feature(decoded, self.config.layer), feats).mean()
                )
        return sum(parts.values()), parts

    def reconstruct(self, model, feats):
        return models.decode_latents(self.vae, model(feats).float()).clamp(0, 1)

    @staticmethod
    def meta_model(config: TrainConfig, shape, size) -> tuple:
        """``(model, vae)`` for the memory estimate, built under ``torch.device("meta")``."""
        try:
            vae = definition_dir(config.model) if config.model else None
        except ModelFilesNotFoundError:
            vae = config.model  # a Hub id: Stable Diffusion's VAE is assumed
        latent = (4, max(1, size[0] // 8), max(1, size[1] // 8))  # Stable Diffusion's latent space
        return models.FeatureMapper(
            feature_shape=shape, latent_shape=latent, hidden_channels=config.hidden_channels
        ), vae


# The kinds of model a job can train, each declared once: ``TrainConfig.kind`` -> its task. An inverter class
# that needs a model trained per layer names its kind (``Inverter.trained_model``).
TRAINED_KINDS: dict[str, type] = {task.kind: task for task in (_DecoderTask, _MapperTask)}


def _task(kind: str) -> type:
    """The task of ``kind`` (:data:`TRAINED_KINDS`)."""
    if kind not in TRAINED_KINDS:
        raise ValueError(
            f"`kind` {kind!r} is not a kind of model diffinv trains; expected one of {', '.join(TRAINED_KINDS)}."
        )
    return TRAINED_KINDS[kind]


# ---------------------------------------------------------------------- the loop
@torch.no_grad()
def _validate(
    task, model, target: TargetNetwork, images: torch.Tensor, layer: str, device, batch_size: int, defense=None
) -> dict:
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
    return {
        "psnr": float(psnr(recon, images).mean()),
        "ssim": float(ssim(recon, images).mean()),
        "mse": float(mse(recon, images).mean()),
    }


MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def _mixed_precision(choice: str, device: torch.device) -> str:
    """``TrainConfig.mixed_precision`` -> what accelerate runs: ``"auto"`` is bf16 (fp16 without it) on a GPU,
    and on the CPU bf16 where the processor computes it natively (:func:`cpu_has_native_bf16`), else ``"no"``."""
    if choice not in MIXED_PRECISION:
        raise ValueError(
            f"`mixed_precision` {choice!r} is not supported; expected one of {', '.join(MIXED_PRECISION)}."
        )
    if choice != "auto":
        return choice
    if device.type == "cpu" or not torch.cuda.is_available():
        return "bf16" if cpu_has_native_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def with_resolved_precision(config: TrainConfig) -> TrainConfig:
    """``config`` with ``mixed_precision`` resolved for its device (``"auto"`` -> what runs): what a job that
    trains decoders records in its own manifest, so that the run says which precision made its numbers."""
    return dataclasses.replace(
        config, mixed_precision=_mixed_precision(config.mixed_precision, _device(config.device))
    )


def _allow_precision(choice: str) -> None:
    """accelerate keeps one mixed precision per process and refuses another; a training with another one than
    the last (``"no"`` after ``"bf16"``, ...) starts from a fresh ``AcceleratorState``. The process group
    (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", choice) != choice:
        AcceleratorState._reset_state()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there oneDNN runs the decoders'
    convolutions about twice as fast in bf16; elsewhere bf16 is emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _device(choice: str | None) -> torch.device:
    """``TrainConfig.device`` -> a device (``None``: CUDA when available)."""
    if not choice:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise ValueError(f"`device` {choice!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'.") from None


def estimate_training_memory(config: TrainConfig) -> MemoryEstimate:
    """The estimated peak memory of the training that ``config`` asks for
    (:func:`~diffinv.resources.estimate_training`): its decoder or mapper, ``hidden_channels`` wide, and the target
    are built on the ``meta`` device (shapes only, nothing allocated, no weights read)."""
    size = (int(config.size), int(config.size))
    with torch.device("meta"):
        target = TargetNetwork.from_name(config.target, config.layer, weights=None, input_size=None)
        model, vae = _task(config.kind).meta_model(config, target.feature_shape(config.layer, size), size)
    return estimate_training(
        config.target,
        config.layer,
        size,
        model,
        batch_size=config.batch_size,
        name=config.kind,
        feature_loss=config.feature_weight > 0,
        vae=vae,
        device=_device(config.device),
    )


def check_training_memory(config: TrainConfig) -> MemoryEstimate:
    """:func:`estimate_training_memory` checked against the memory of ``config.device``.

    Raises:
        InsufficientMemoryError: it does not fit (the message gives the estimate, the memory available and the
            flags that make it smaller).
    """
    return check_memory(
        estimate_training_memory(config),
        _device(config.device),
        job="the training",
        hint="Use a narrower model (--hidden-channels), a smaller batch (--batch-size; "
        "--train-batch-size in atlas and audit) or a smaller --size.",
    )


# What is not a setting, defined once for every job that trains (train-decoder/train-mapper, atlas, audit):
# the fields of TrainConfig that do not define the trained model (where it goes, how the run is watched) ...
NOT_SETTINGS = ("out", "kind", "overwrite", "device", "progress", "checkpoint_every", "keep_checkpoints", "val_every")
# ... and those that a job training models from a template fills in per model: its items' own (layer, defense)
# and the target, which the job records itself.
PER_MODEL = ("layer", "defense", "defense_state", "target", "weights")


def template_settings(template: TrainConfig, *, filled: tuple[str, ...] = ()) -> dict:
    """The settings of the models a job trains from ``template`` (one per layer, per defense), for the job's
    manifest: every field but :data:`NOT_SETTINGS`, :data:`PER_MODEL`, the fields its kind ignores and
    ``filled``, the fields the job derives from settings it records otherwise (the atlas: its split's images)."""
    skipped = NOT_SETTINGS + PER_MODEL + _task(template.kind).unused + tuple(filled)
    return {k: v for k, v in asdict(template).items() if k not in skipped}


def _data_fingerprint(*sets: ImageDataset | None) -> str:
    """A 16-hex-digit fingerprint of the pixels of the datasets, in order (same sources, other content: another one)."""
    digest = hashlib.blake2b(digest_size=8)
    for dataset in sets:
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
    settings.update(
        target=target.identity(),
        mixed_precision=accelerator.mixed_precision,
        data_fingerprint=_data_fingerprint(train_set, val_set),
    )
    settings.update(task.settings())
    if settings.get("defense") is None:
        settings.pop("defense", None)  # runs without a defense keep the manifests they had before the field
    if settings.get("defense_state") is None:
        settings.pop("defense_state", None)
    else:  # a learned defense: what it trained, by the fingerprint of its state
        settings["defense_state"] = fingerprint_path(Path(config.defense_state) / STATE_FILE)
    return settings


def _checked(config: TrainConfig, task_cls) -> TrainConfig:
    """1. Check inputs (on a copy: the caller's config is never changed)."""
    config = dataclasses.replace(config, kind=task_cls.kind)
    if config.max_steps < 1 or config.batch_size < 1:
        raise ValueError(
            f"`max_steps` and `batch_size` must be positive, got {config.max_steps} and {config.batch_size}."
        )
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out` {str(out)!r} is an existing file; expected an output folder.")
    _mixed_precision(config.mixed_precision, _device(config.device))
    if config.defense is not None:
        learned = parse_defense(config.defense).learned
        if learned != (config.defense_state is not None):
            raise ValueError(
                f"`defense` {config.defense!r} is "
                + (
                    "learned: `defense_state` must name the folder of its trained state."
                    if learned
                    else "fixed: leave `defense_state` out."
                )
            )
        if learned and not TrainedState.exists(config.defense_state):
            raise FileNotFoundError(f"`defense_state` {config.defense_state!r} holds no trained defense.")
    elif config.defense_state is not None:
        raise ValueError("`defense_state` is given without `defense`; give the learned setting it was trained for.")
    check_training_memory(config)
    return config


def _accelerator(config: TrainConfig):
    """2. The accelerator (one process, or one of a distributed launch), and this process's slice of the global
    batch (split evenly)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    device = _device(config.device)
    mixed_precision = _mixed_precision(config.mixed_precision, device)
    if device.type == "cuda" and device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(device)  # accelerate uses the current GPU of a single process
    # split_batches: the batch is the global one, so the LR schedule advances one step per optimizer
    # step whatever the number of processes (accelerate otherwise steps it once per process)
    _allow_precision(mixed_precision)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    processes, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % processes:
        raise ValueError(
            f"`batch_size` {config.batch_size} is the global batch (crops per step summed over the "
            f"processes) and must be divisible by the number of processes, {processes}; choose e.g. "
            f"{processes * max(1, round(config.batch_size / processes))}."
        )
    return accelerator, slice(rank * config.batch_size // processes, (rank + 1) * config.batch_size // processes)


def _prepared_model(config: TrainConfig, task, target: TargetNetwork, train_set, accelerator, defense):
    """5. Model, feature statistics, optimizer, LR schedule and the resumed state (from the latest checkpoint)."""
    from diffusers.optimization import get_scheduler

    device = accelerator.device
    model = task.build().train()
    stats_generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        sample = torch.cat(
            [
                target.feature(
                    train_set.random_crops(
                        config.batch_size, config.size, stats_generator, min_scale=config.min_crop
                    ).to(device),
                    config.layer,
                )
                for _ in range(max(1, 64 // config.batch_size))
            ]
        )
        if defense:
            sample = defense(sample, stats_generator)
    model.set_feature_stats(sample.cpu())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=min(config.warmup_steps, config.max_steps),
        num_training_steps=config.max_steps,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state = TrainerState(config.seed)  # the same crop generator in every process: each builds its slice
    checkpoint = latest_checkpoint(Path(config.out))
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, state, model, optimizer, lr_scheduler)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    return model, optimizer, lr_scheduler, state


def _step(config: TrainConfig, task, target, train_set, accelerator, parts, state: TrainerState, local, defense):
    """One optimizer step of the global batch (skipped on every process when its loss is not finite)."""
    model, optimizer, lr_scheduler = parts
    tic = time.perf_counter()
    images = train_set.random_crops(
        config.batch_size, config.size, state.generator, min_scale=config.min_crop, keep=local
    ).to(accelerator.device)
    with torch.no_grad():
        feats = target.feature(images, config.layer).float()
        if defense:
            feats = defense(feats, state.generator)
    with accelerator.autocast():
        loss, _ = task.loss(model, images, feats)
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


def _train(config: TrainConfig, task_cls) -> TrainResult:
    from accelerate.utils import set_seed

    # 1. Check inputs; 2. Accelerator
    config = _checked(config, task_cls)
    out = Path(config.out)
    defense = parse_defense(config.defense) if config.defense is not None else None
    accelerator, local = _accelerator(config)
    device = accelerator.device

    # 3. Data (before the run store: a source that fails to load leaves no run behind), target, task
    train_set, val_set = load_training_data(config)
    set_seed(config.seed)
    target = TargetNetwork.from_name(
        config.target, config.layer, weights=config.weights, input_size=(config.size, config.size)
    ).to(device)
    if defense is not None and defense.learned:  # the features of the deployment: its client, its transform
        defense = defense.deployment(target, config.layer, TrainedState.load(config.defense_state))
        target = defense.target
    task = task_cls(config, target, device)
    val_images = val_set.fixed(config.size) if val_set is not None else None

    # 4. Run store: the same settings resume from the latest checkpoint, other settings are refused
    #    (every process checks the folder, the main one writes the manifest, the others wait for it)
    RunStore(
        out,
        f"train-{task.kind}",
        _settings(config, task, target, accelerator, train_set, val_set),
        overwrite=config.overwrite,
        outputs=_outputs(),
        state=accelerator.state,
    )
    accelerator.wait_for_everyone()

    # 5. Model, optimizer, resumed state
    model, optimizer, lr_scheduler, state = _prepared_model(config, task, target, train_set, accelerator, defense)
    start_step = state.step

    def finish_interval():
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            save_model(unwrapped, out)
            write_json(out / "training_log.json", _log(config, state, train_set, val_set, start_step))
            plot_loss_curve(
                state.losses,
                state.validation,
                out / "loss_curve.png",
                f"{task.kind} {config.target}.{config.layer} @ {config.size}px",
            )

    # 6. Loop
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        desc=f"train-{task.kind} {config.layer}",
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    while state.step < config.max_steps:
        _step(config, task, target, train_set, accelerator, (model, optimizer, lr_scheduler), state, local, defense)
        bar.update(1)
        postfix = {"loss": f"{state.losses[-1]:.4g}"}
        if (
            val_images is not None
            and accelerator.is_main_process
            and (state.step % config.val_every == 0 or state.step == config.max_steps)
        ):
            # the unwrapped model: no collective call, the other processes go on to the next step
            scores = _validate(
                task,
                accelerator.unwrap_model(model),
                target,
                val_images,
                config.layer,
                device,
                config.batch_size,
                defense,
            )
            state.validation.append({"step": state.step, **scores})
            postfix["val_psnr"] = f"{scores['psnr']:.2f}"
        bar.set_postfix(postfix)
        if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
            save_checkpoint(accelerator, out, state, model, optimizer, lr_scheduler, config.keep_checkpoints)
            finish_interval()
    bar.close()
    if start_step >= config.max_steps:  # nothing left to train: still leave a model and a log
        finish_interval()
    log = _log(config, state, train_set, val_set, start_step)
    final_val = state.validation[-1] if state.validation else {}
    return TrainResult(
        out=out,
        step=state.step,
        val_psnr=final_val.get("psnr"),
        val_ssim=final_val.get("ssim"),
        seconds=state.seconds,
        images_per_second=log["images_per_second"],
        log=log,
        main_process=accelerator.is_main_process,
    )


def _log(config: TrainConfig, state: TrainerState, train_set, val_set, start_step: int) -> dict:
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


def train(config: TrainConfig) -> TrainResult:
    """Trains the model of ``config.kind`` (:data:`TRAINED_KINDS`) for ``config.layer``; see :class:`TrainConfig`."""
    return _train(config, _task(config.kind))


def train_decoder(config: TrainConfig) -> TrainResult:
    """Trains an :class:`~diffinv.models.UpconvNet` for ``config.layer``; see :class:`TrainConfig`."""
    return _train(config, _DecoderTask)


def train_mapper(config: TrainConfig) -> TrainResult:
    """Trains a :class:`~diffinv.models.FeatureMapper` for ``config.layer`` into ``config.model``'s latent space."""
    return _train(config, _MapperTask)
