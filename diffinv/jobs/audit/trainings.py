"""The audit's trainings, work items run before the attacks: the models of the trained methods (e.g. the
decoder: one per layer on clean features for the naive attacker, one per defense setting for the adaptive one)
and the learned defense settings (``nopeek``, ``shredder``, ``adversarial``: one per layer on labelled images)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from ...defenses.training import DefenseTrainConfig, TrainedState
from ...inverters.registry import INVERTERS
from ...io import pixels_fingerprint
from ...targets import TargetNetwork
from ..items import TrainingItem
from ..training import TrainConfig, train, with_resolved_precision
from .items import DEFENSE, defense_folder, model_folder

__all__ = ["TrainingMixin", "trained_methods", "training_record"]


def trained_methods(methods: Mapping, target: TargetNetwork, size: tuple[int, int], progress: bool) -> dict:
    """``name -> (inverter class, template)`` of the methods given as a :class:`TrainConfig` template: those
    whose class declares ``trained_model``, the kind of model the job trains for them (the template resolved:
    its kind, target, size and precision filled in).

    Raises:
        ValueError: a template for a method that trains nothing, or non-square images.
    """
    trained = {}
    for name, value in methods.items():
        if not isinstance(value, TrainConfig):
            continue
        cls = INVERTERS.get(name)
        kind = None if cls is None else cls.trained_model
        if kind is None:
            raise ValueError(
                f"`methods[{name!r}]` is a TrainConfig, but method {name!r} needs no trained model (its "
                f"class declares no `trained_model`); give an Inverter or a factory for it."
            )
        if size[0] != size[1]:
            raise ValueError(f"the {kind} trains on square images; the images are {size[0]}x{size[1]}.")
        trained[name] = (
            cls,
            with_resolved_precision(
                dataclasses.replace(
                    value, target=target.name, weights=target.weights, size=size[0], kind=kind, progress=progress
                )
            ),
        )
    return trained


def training_record(item: TrainingItem, result, **more) -> dict:
    """The record of a finished training (atlas, audit)."""
    return {
        "kind": "training",
        "layer": item.layer,
        **more,
        "seconds": result.log["train_seconds"],
        "steps": result.step,
        "val_psnr": result.val_psnr,
        "val_ssim": result.val_ssim,
    }


class TrainingMixin:
    """The trainings of :class:`~diffinv.jobs.audit.AuditJob`: its items, whether one is finished, and the
    records of one (it reads what the job's ``__init__`` sets)."""

    def _learned_settings(self, train_images, train_labels, config, utility) -> dict:
        """Checks the inputs of the learned settings and the utility; the manifest's entries for them (none for an
        audit without learned settings that measures agreement, so that its manifest is the one it always had)."""
        if utility not in (None, "accuracy", "agreement"):
            raise ValueError(
                f"`utility` must be 'accuracy', 'agreement' or None (accuracy with labels and a learned "
                f"setting), got {utility!r}."
            )
        if utility == "accuracy" and self.label_values is None:
            raise ValueError("`utility` 'accuracy' needs the true `labels` of the audited images.")
        self.accuracy = utility == "accuracy" or (
            utility is None and bool(self.learned) and self.label_values is not None
        )
        self.train_images, self.train_labels = None, None
        self.defense_config = config or DefenseTrainConfig()
        extra = {"utility": "accuracy"} if self.accuracy else {}
        if not self.learned:
            return extra
        self._check_training_images(train_images, train_labels)
        self.train_images, self.train_labels = train_images.cpu(), [int(v) for v in train_labels]
        return {
            **extra,
            "defense_training": {
                **self.defense_config.settings(),
                "images": len(train_images),
                "pixels": pixels_fingerprint(self.train_images),
                "labels": self.train_labels,
            },
        }

    def _check_training_images(self, train_images, train_labels) -> None:
        """The learned settings train on labelled images of the audited size; the methods that optimize through
        the defense are factories (the adaptive attacker inverts the fine-tuned client)."""
        if train_images is None or train_labels is None or len(train_images) != len(train_labels):
            raise ValueError(
                f"the learned settings {', '.join(self.learned)} train on labelled images: give "
                f"`train_images` (M, 3, H, W) and one class per image in `train_labels`, got "
                f"{None if train_images is None else tuple(train_images.shape)} and "
                f"{None if train_labels is None else len(train_labels)} labels."
            )
        if tuple(train_images.shape[-2:]) != self.size:
            raise ValueError(
                f"`train_images` are {tuple(train_images.shape[-2:])}; expected the audited images' size {self.size}."
            )
        rebuilt = [
            m for m, inv in self.inverters.items() if inv.config.accepts_feature_transform and m not in self.factories
        ]
        if rebuilt:
            raise ValueError(
                f"`methods[{rebuilt[0]!r}]` is an Inverter; with a learned setting the adaptive attacker "
                f"inverts the defended client, so give a factory `target -> Inverter` for it."
            )

    def trainings(self) -> list[TrainingItem]:
        """One training per trained method and layer: on clean features (the naive attacker's), and on the
        features of each defense setting (the adaptive attacker's)."""
        known = ["none", *(spec for spec in self.specs if self.by_spec[spec])]
        return [
            TrainingItem(name, template.kind, layer, spec, model_folder(self.out_dir, template.kind, spec) / layer)
            for layer in self.layers
            for name, (_, template) in self.trained.items()
            for spec in known
        ]

    def defense_trainings(self) -> list[TrainingItem]:
        """One training per learned setting and layer (:class:`~diffinv.jobs.items.TrainingItem` of kind
        ``defense``), claimed like every item: never trained twice, resumed when finished."""
        return [
            TrainingItem(DEFENSE, DEFENSE, layer, spec, defense_folder(self.out_dir, spec, layer))
            for layer in self.layers
            for spec in self.learned
        ]

    def trained_folder(self, record: Mapping) -> bool:
        """Whether a training record's model is in its folder (a record alone does not make it finished)."""
        if isinstance(record, Mapping) and record.get("method") == DEFENSE:
            try:
                return TrainedState.exists(defense_folder(self.out_dir, record["defense"], str(record["layer"])))
            except (KeyError, TypeError):
                return False
        try:
            _, template = self.trained[record["method"]]
            folder = model_folder(self.out_dir, template.kind, record["defense"]) / str(record["layer"])
        except (KeyError, TypeError):
            return False
        return (folder / "config.json").is_file()

    def _train(self, item: TrainingItem) -> Iterator[dict]:
        """Trains the item's model (every process of a launch takes part); the main process records it."""
        _, template = self.trained[item.method]
        learned = item.defense in self.learned
        result = train(
            dataclasses.replace(
                template,
                out=str(item.folder),
                layer=item.layer,
                defense=None if item.defense == "none" else item.defense,
                **({"defense_state": str(defense_folder(self.out_dir, item.defense, item.layer))} if learned else {}),
            )
        )
        if self.main:
            yield training_record(item, result, defense=item.defense, method=item.method)

    def _train_defense(self, item: TrainingItem) -> Iterator[dict]:
        """Trains a learned setting on the training images (a state already in its folder is read, not trained
        again: a process stopped between the state and its record)."""
        if TrainedState.exists(item.folder):
            state = TrainedState.load(item.folder)
        else:
            state = self.by_spec[item.defense].train(
                self.target,
                item.layer,
                self.train_images.to(self.device),
                self.train_labels,
                self.defense_config,
                progress=self.show,
            )
            state.save(item.folder)
        meta = state.meta
        yield {
            "kind": "training",
            "layer": item.layer,
            "defense": item.defense,
            "method": DEFENSE,
            "seconds": meta.get("seconds"),
            "steps": meta.get("steps"),
            "privacy": meta.get("privacy"),
            "privacy_before": meta.get("privacy_before"),
            "privacy_after": meta.get("privacy_after"),
            "task_loss": (meta.get("history") or [{}])[-1].get("task"),
        }
