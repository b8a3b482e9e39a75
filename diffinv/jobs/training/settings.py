"""What defines a trained model: the settings of a run's manifest, and of the models a job trains from a template."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from ...datasets import ImageDataset
from ...defenses.training import STATE_FILE
from ...io import fingerprint_path
from ...targets import TargetNetwork
from .config import TrainConfig
from .tasks import task_of

__all__ = ["NOT_SETTINGS", "PER_MODEL", "run_settings", "template_settings"]


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
    skipped = NOT_SETTINGS + PER_MODEL + task_of(template.kind).unused + tuple(filled)
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


def run_settings(config: TrainConfig, task, target: TargetNetwork, accelerator, train_set, val_set) -> dict:
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
