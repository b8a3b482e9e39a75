"""The defended deployment of the audit: each setting as the client runs it, the defended features of a chunk,
and the utility records (top-1 agreement with the undefended network and, with labels, accuracy)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator

import torch

from ...defenses import Deployment, UtilityUnavailable, apply_defense, utility_agreement, utility_scores
from ...defenses.training import TrainedState
from ...features import FeatureSet
from .items import UtilityItem, defense_folder, defense_seed

__all__ = ["UtilityMixin"]


class UtilityMixin:
    """The deployments, features and utility records of :class:`~diffinv.jobs.audit.AuditJob` (it reads what
    the job's ``__init__`` sets)."""

    def deployment(self, layer: str, spec: str) -> Deployment:
        """The setting as the client runs it at ``layer`` (a learned one from its trained state), made once."""
        if (layer, spec) not in self.deployments:
            defense = self.by_spec[spec]
            state = TrainedState.load(defense_folder(self.out_dir, spec, layer)) if defense.learned else None
            self.deployments[layer, spec] = defense.deployment(self.target, layer, state)
        return self.deployments[layer, spec]

    def _features(self, layer: str, spec: str, chunk: range):
        """The clean and the defended features of a chunk (the defense drawn by the chunk's own seed)."""

        def extract():
            clean = FeatureSet.extract(
                self.target, self.images[chunk.start : chunk.stop], layer, sources=[self.sources[i] for i in chunk]
            )
            generator = torch.Generator().manual_seed(defense_seed(layer, spec, chunk.start))
            if not self.by_spec[spec].learned:
                return clean, apply_defense(clean, self.by_spec[spec], generator)
            deployment = self.deployment(layer, spec)  # the client's own features, then its transform
            with torch.no_grad():
                own = deployment.target.feature(self.images[chunk.start : chunk.stop], layer)
                shipped = deployment(own, generator).float().cpu().contiguous()
            return clean, dataclasses.replace(clean, features=shipped, defense=spec)

        return self.cache.get((layer, spec, chunk), extract)

    def _utility(self, item: UtilityItem) -> Iterator[dict]:
        chunk = item.images
        clean, defended = self._features(item.layer, item.defense, chunk)
        tic = time.perf_counter()
        if self.accuracy or self.learned:
            yield from self._utility_scores(item, defended, tic)
            return
        try:
            agreement, reason = (
                utility_agreement(
                    self.target, self.images[chunk.start : chunk.stop], item.layer, clean.features, defended.features
                ).tolist(),
                None,
            )
        except UtilityUnavailable as err:
            agreement, reason = [None] * len(chunk), str(err)
        seconds = (time.perf_counter() - tic) / len(chunk)
        for j, (i, key) in enumerate(zip(chunk, self.keys(item))):
            if key not in self.done:
                yield {
                    "kind": "utility",
                    "layer": item.layer,
                    "defense": item.defense,
                    "image": self.sources[i],
                    "utility": agreement[j],
                    "reason": reason,
                    "seconds": seconds,
                }

    def _utility_scores(self, item: UtilityItem, defended: FeatureSet, tic: float) -> Iterator[dict]:
        """Utility records with the agreement and, with labels, the accuracy (:func:`~diffinv.defenses.utility_scores`);
        ``utility``: the accuracy where measured (:attr:`accuracy`), else the agreement."""
        chunk = item.images
        labels = None if self.label_values is None else self.label_values[chunk.start : chunk.stop]
        try:
            scores = utility_scores(
                self.deployment(item.layer, item.defense),
                self.images[chunk.start : chunk.stop],
                item.layer,
                self.target,
                defended.features,
                labels,
            )
            scores, reason = {k: v.tolist() for k, v in scores.items()}, None
        except UtilityUnavailable as err:
            scores, reason = {"agreement": [None] * len(chunk)}, str(err)
        seconds = (time.perf_counter() - tic) / len(chunk)
        for j, (i, key) in enumerate(zip(chunk, self.keys(item))):
            if key in self.done:
                continue
            accuracy = scores.get("accuracy", [None] * len(chunk))[j]
            accuracy = None if accuracy is None or math.isnan(accuracy) else accuracy
            yield {
                "kind": "utility",
                "layer": item.layer,
                "defense": item.defense,
                "image": self.sources[i],
                "utility": accuracy if self.accuracy else scores["agreement"][j],
                "agreement": scores["agreement"][j],
                "accuracy": accuracy,
                "reason": reason,
                "seconds": seconds,
            }
