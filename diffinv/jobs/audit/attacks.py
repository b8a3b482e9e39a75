"""The audit's attacks: each method inverts the defended features of a chunk, as the naive attacker (unaware
of the defense) or the adaptive one (through the defense's attacker transform, or with models trained on
defended features); its reconstructions are saved and scored, one record per image."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ...features import FeatureSet
from ...inverters import Inverter
from ...io import save_image
from ...metrics import reconstruction_scores
from ..records import image_label, image_scores
from .items import AttackItem, audit_image_path, defense_seed, model_folder

__all__ = ["AttackMixin"]


class AttackMixin:
    """The attack records of :class:`~diffinv.jobs.audit.AuditJob` (it reads what the job's ``__init__`` sets,
    and the deployments and features of :class:`~diffinv.jobs.audit.utility.UtilityMixin`)."""

    def _inverter(self, item: AttackItem) -> Inverter:
        """The item's inverter: the given one, or the one of the models trained for the attacker."""
        if item.method in self.inverters:
            client = self.deployment(item.layer, item.defense).target if item.attacker == "adaptive" else self.target
            if client is self.target:
                return self.inverters[item.method]
            if (item.method, item.layer, item.defense) not in self.models:  # it inverts the fine-tuned client
                self.models[item.method, item.layer, item.defense] = self.factories[item.method](client)
            return self.models[item.method, item.layer, item.defense]
        known = item.defense if item.attacker == "adaptive" else "none"
        if (item.method, known) not in self.models:
            cls, template = self.trained[item.method]
            self.models[item.method, known] = cls(
                self.target, **{cls.trained_model: model_folder(self.out_dir, template.kind, known)}
            )
        return self.models[item.method, known]

    def _through(self, item: AttackItem, defended: FeatureSet) -> tuple[dict, FeatureSet]:
        """``(invert's feature_transform argument, the features to invert)``: the adaptive attacker of a method
        that optimizes a feature loss differentiates through the defense (a learned one's fine-tuned client)."""
        spec, device = item.defense, self.device
        through = {}
        if item.attacker == "adaptive" and item.method in self.inverters:
            draws = torch.Generator().manual_seed(defense_seed(item.layer, spec, item.images.start) + 1 + item.seed)
            if not self.by_spec[spec].learned:
                through["feature_transform"] = self.by_spec[spec].attacker_transform(
                    defended.features.to(device), draws
                )
            else:
                deployment = self.deployment(item.layer, spec)
                through["feature_transform"] = deployment.attacker_transform(defended.features.to(device), draws)
                defended = dataclasses.replace(
                    defended,
                    weights=deployment.target.weights,
                    weights_fingerprint=deployment.target.weights_fingerprint(),
                )
        return through, defended

    def _attack(self, item: AttackItem) -> Iterator[dict]:
        chunk, spec, device = item.images, item.defense, self.device
        _, defended = self._features(item.layer, spec, chunk)
        inverter, generator = self._inverter(item), torch.Generator().manual_seed(item.seed)
        through, defended = self._through(item, defended)
        out = inverter.invert(defended, generator=generator, progress=self.show, **through)
        labels = None if self.label_values is None else self.label_values[chunk.start : chunk.stop]
        scores = reconstruction_scores(
            self.target,
            out.images.to(device),
            self.images[chunk.start : chunk.stop],
            lpips=self.lpips,
            judge=self.judge,
            feature_residual=out.feature_residual,
            originals_cache=self.originals_scored.setdefault(chunk, {}),
            labels=labels,
        )
        for j, (i, key) in enumerate(zip(chunk, self.keys(item))):
            if key in self.done:
                continue
            file = save_image(
                out.images[j],
                audit_image_path(self.out_dir, item.layer, spec, item.method, item.attacker, item.seed, self.files[i]),
            )
            yield {
                "kind": "attack",
                "layer": item.layer,
                "defense": spec,
                "method": item.method,
                "attacker": item.attacker,
                "seed": item.seed,
                "image": self.sources[i],
                "file": file.relative_to(self.out_dir).as_posix(),
                "white_box": bool(inverter.white_box),
                "label": image_label(self.label_values, i),
                **image_scores(scores, j),
                "seconds": out.seconds / len(chunk),
            }
