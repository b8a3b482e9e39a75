"""What a training run is given (:class:`TrainConfig`), what it produced (:class:`TrainResult`), and its data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ... import datasets
from ...datasets import ImageDataset

__all__ = ["TrainConfig", "TrainResult", "load_training_data"]


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
