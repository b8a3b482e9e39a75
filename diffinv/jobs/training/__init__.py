"""Training the black-box inverters on (image, feature) pairs, with accelerate.

One loop (:mod:`~diffinv.jobs.training.loop`) serves both learned maps (:mod:`~diffinv.jobs.training.tasks`):
``train_decoder`` (:class:`~diffinv.models.UpconvNet`, features -> pixels, pixel MSE, optionally plus a feature
loss) and ``train_mapper`` (:class:`~diffinv.models.FeatureMapper`, features -> diffusion latent, MSE to the VAE
encoding, optionally plus pixel and feature losses). Every step draws random crops of the training images and
computes the target's features on the fly; validation scores PSNR/SSIM on held-out images. The output folder
is a run store: the same settings resume from the latest checkpoint, other settings are refused.

Example:
    >>> config = TrainConfig(out="decoders/blocks.2", layer="blocks.2", images=["photos/"],
    ...                      videos=["clip.mp4"], val_samples=["chelsea", "coffee"], max_steps=2000)
    >>> result = train_decoder(config)
    >>> result.val_psnr
    18.3
"""

from .config import TrainConfig, TrainResult, load_training_data
from .loop import train, train_decoder, train_mapper
from .memory import check_training_memory, estimate_training_memory
from .precision import MIXED_PRECISION, with_resolved_precision
from .settings import NOT_SETTINGS, PER_MODEL, template_settings
from .tasks import TRAINED_KINDS

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
