"""Privacy audit of a split point: defenses, the deployment's utility and the attacks' success.

For each layer (split point) and defense setting (:mod:`diffinv.defenses`):

* **utility**: the target's top-1 agreement when the rest of the network runs from the defended
  features (:func:`~diffinv.defenses.utility_agreement`; ``None`` with the reason where the network
  cannot be run from the layer);
* **attack success** of every method, PSNR, SSIM, LPIPS (when available) and top-1 agreement of the
  reconstruction, for two attackers: the *naive* one inverts the defended features as if they were
  not defended; the *adaptive* one knows the defense: the methods whose config
  ``accepts_feature_transform`` (they optimize a feature loss) differentiate through it inside their loss
  (:meth:`~diffinv.defenses.Defense.attacker_transform`: fresh noise/masks every step,
  straight-through quantization and top-k, the observed support of a final prune/top-k); a method that
  needs a trained model (its class declares ``trained_model``, e.g. the decoder) gets one trained on
  defended features (the training job, :func:`~diffinv.jobs.training.train`, with ``defense`` set). Without
  a defense the two attackers are the same and only the naive one runs.

The run folder is a run store (:mod:`diffinv.jobs.store`): ``manifest.json``, one record per
(layer, defense, method, attacker, seed, image) and per (layer, defense, image) of utility, appended
as each work item finishes (resumable; other settings refused). The work items (:class:`UtilityItem`,
:class:`AttackItem` and the trainings, :class:`~diffinv.jobs.items.TrainingItem`) are run by the job
protocol's runner (:func:`~diffinv.jobs.items.run_job`), as in the bench: split across the processes of a
``torchrun``/``accelerate launch`` run and shared with independent commands on the same folder; the models
are trained first, each once, data-parallel. The main process writes ``report.json``, ``report.md``,
``privacy_utility.png`` and ``grid_LAYER.png`` (rows = defense settings).

Example:
    >>> report = run_audit(target, images, names, ["blocks.1"], parse_defenses(["none", "noise:0.3"]),
    ...                    {"pixel": PixelInverter}, out_dir="audit_out")
    >>> report["settings"][1]["utility"], report["settings"][1]["attacks"]["pixel"]["adaptive"]["psnr"]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..defenses import (
    Defense,
    DefenseTrainConfig,
    Deployment,
    TrainedState,
    UtilityUnavailable,
    apply_defense,
    utility_agreement,
    utility_scores,
)
from ..features import FeatureSet
from ..inverters import Inverter
from ..inverters.registry import INVERTERS
from ..io import atomic_path, pixels_fingerprint, save_image, write_json
from ..judge import Judge, labels_tensor
from ..metrics import LPIPS, reconstruction_scores
from ..stats import bootstrap_ci, format_ci, paired_difference_ci
from ..targets import TargetNetwork
from .bench import DEFAULT_BATCH_SIZE, chunks
from .items import (
    Job,
    LayerCache,
    TrainingItem,
    image_label,
    image_scores,
    item_settings,
    merge_records,
    place,
    run_job,
)
from .report import SEMANTIC_METRICS, finite_per_image, write_grid, write_privacy_utility_plot
from .store import RunStore, unique_names
from .training import TrainConfig, template_settings, train, with_resolved_precision

__all__ = [
    "ATTACKERS",
    "LOSS_BUDGETS",
    "UTILITY_THRESHOLD",
    "AttackItem",
    "AuditJob",
    "UtilityItem",
    "audit_image_path",
    "decoder_folder",
    "defense_folder",
    "model_folder",
    "run_audit",
]

ATTACKERS = ("naive", "adaptive")
UTILITY_THRESHOLD = 0.9
OUTPUTS = ("images", "decoders", "report.json", "report.md", "privacy_utility.png")
LOSS_BUDGETS = (0.01, 0.05, 0.10)  # the verdict table: the utility lost, at most (1, 5 and 10 points)
DEFENSE = "defense"  # the `method` of a learned defense's training record
METRICS = (
    "psnr",
    "ssim",
    "lpips",
    "top1_agreement",
    "feature_residual",
    "seconds",
    *(m for m in SEMANTIC_METRICS if m != "top1_agreement"),
)


def _slug(spec: str) -> str:
    return spec.replace(":", "-").replace("+", "_")


def model_folder(out_dir, kind: str, spec: str) -> Path:
    """Where the audit trains the models of ``kind`` that know defense setting ``spec``: ``KINDs/SPEC/LAYER``
    (``none``: the naive attacker's)."""
    return Path(out_dir) / f"{kind}s" / _slug(spec)


def decoder_folder(out_dir, defense: Defense) -> Path:
    """Where the audit trains the decoders that know ``defense``: ``decoders/SPEC/LAYER`` (``none``: the naive one)."""
    return model_folder(out_dir, "decoder", defense.spec)


def defense_folder(out_dir, spec: str, layer: str) -> Path:
    """Where the audit trains learned defense setting ``spec`` at ``layer``: ``defenses/SPEC/LAYER``."""
    return Path(out_dir) / "defenses" / _slug(spec) / layer


def audit_image_path(out_dir, layer: str, defense: str, method: str, attacker: str, seed: int, name: str) -> Path:
    """``images/LAYER/DEFENSE/METHOD_ATTACKER/NAME_seedS.png``."""
    return Path(out_dir) / "images" / layer / _slug(defense) / f"{method}_{attacker}" / f"{name}_seed{seed}.png"


@dataclass(frozen=True)
class UtilityItem:
    """The deployment's utility at ``layer`` under defense setting ``defense``, on the images of a chunk."""

    layer: str
    defense: str
    images: range

    def __str__(self) -> str:
        return f"{self.layer} {self.defense} utility images {self.images.start}-{self.images.stop - 1}"


@dataclass(frozen=True)
class AttackItem:
    """``method``'s attack (``attacker``: naive or adaptive) on the defended features of a chunk of images."""

    layer: str
    defense: str
    method: str
    attacker: str
    seed: int
    images: range

    def __str__(self) -> str:
        return (
            f"{self.layer} {self.defense} {self.method} {self.attacker} images {self.images.start}-"
            f"{self.images.stop - 1}"
        )


def _key(record: Mapping) -> tuple:
    return (
        record["kind"],
        record["layer"],
        record["defense"],
        record.get("method", ""),
        record.get("attacker", ""),
        record.get("seed", 0),
        record.get("image", ""),
    )


def _adaptive_reason(method: str, adaptive: bool) -> str | None:
    """``None`` when the method has an adaptive attacker (it optimizes through the defense, or the audit
    trains its model on defended features), else why not."""
    if adaptive:
        return None
    return (
        f"{method}: no adaptive attacker in the audit (it does not optimize the loss of `optimize()` and is not "
        f"trained here); only the naive attack is reported"
    )


def _defense_seed(layer: str, spec: str, start: int) -> int:
    """The seed of a chunk's defense draw: depends on the layer, the setting and the chunk, nothing else."""
    return zlib.crc32(f"{layer}|{spec}|{start}".encode())


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


def run_audit(
    target: TargetNetwork,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    defenses: Sequence[Defense],
    methods: Mapping[str, Inverter | Callable[[TargetNetwork], Inverter] | TrainConfig],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: Mapping | None = None,
    overwrite: bool = False,
    progress: bool = True,
    state=None,
    labels: Sequence[int | None] | None = None,
    judge: Judge | None = None,
    train_images: torch.Tensor | None = None,
    train_labels: Sequence[int] | None = None,
    defense_training: DefenseTrainConfig | None = None,
    utility: str | None = None,
) -> dict:
    """Audits ``layers`` of ``target`` under each defense setting; returns the report (``report.json``).

    Args:
        target: the network (with a classifier head for utility and top-1 agreement).
        images: ``(N, 3, H, W)`` originals in [0, 1].
        sources: one name per image.
        layers: the split points.
        defenses: the settings (:func:`~diffinv.defenses.parse_defenses`); include ``Defense()``
            (none) for the undefended reference.
        methods: name -> an :class:`Inverter`, a factory ``target -> Inverter``, or, for a method whose class
            declares ``trained_model`` (``"decoder"``), a :class:`~diffinv.jobs.training.TrainConfig` template:
            the audit trains one model per layer on clean features (the naive attacker) and one per defense
            setting on defended features (the adaptive one), into ``out_dir/KINDs`` (``decoders``; ``out``,
            ``layer``, ``defense``, ``target``, ``weights`` and ``size`` are filled in).
        out_dir: the run folder.
        seeds: each attack runs once per seed.
        batch_size: images per work item.
        settings: more settings for the manifest (e.g. the dataset).
        overwrite: start afresh in a folder that holds another run.
        state: accelerate's ``PartialState`` under a multi-process launch: work items are split
            across the processes, models trained data-parallel, the main process writes the report.
        labels: the true class of each image (``None`` where unknown): attack records carry it and the
            target's top-1 accuracy on originals and reconstructions.
        judge: a second network that the attack never saw (:class:`~diffinv.judge.Judge`): its accuracy,
            agreement and feature similarity on the reconstructions.
        train_images, train_labels: ``(M, 3, H, W)`` labelled images (never audited) that train the learned
            defenses (``nopeek``, ``shredder``, ``adversarial``), each once per layer, into
            ``out_dir/defenses/SPEC/LAYER`` (a claimed work item, resumable); required with a learned setting.
        defense_training: how they train (:class:`~diffinv.defense_training.DefenseTrainConfig`; default its
            defaults).
        utility: ``"accuracy"`` (the deployment's top-1 accuracy on ``labels``, agreement beside it, and the
            frontier in the report) or ``"agreement"`` (with the undefended network, as without labels);
            ``None``: accuracy when there are labels and a learned setting, else agreement.

    Raises:
        RunSettingsError: ``out_dir`` holds a run made with other settings (and not ``overwrite``).
        ValueError: no defense setting, mismatched ``sources``, a method that cannot make images of this size.
    """
    job = AuditJob(
        target,
        images,
        sources,
        layers,
        defenses,
        methods,
        out_dir,
        seeds=seeds,
        batch_size=batch_size,
        settings=settings,
        overwrite=overwrite,
        progress=progress,
        state=state,
        labels=labels,
        judge=judge,
        train_images=train_images,
        train_labels=train_labels,
        defense_training=defense_training,
        utility=utility,
    )
    if job.defense_trainings():  # first the learned defenses (the decoders that know them train on their features)
        run_job(
            job,
            job.store,
            job.defense_trainings(),
            state=state,
            show=job.show,
            prefix="defend-",
            accept=job.trained_folder,
        )
    run_job(
        job,
        job.store,
        job.trainings(),
        state=state,
        show=job.show,
        together=True,
        prefix="train-",
        accept=job.trained_folder,
    )
    run_job(job, job.store, job.items(), state=state, show=job.show)
    return job.report()


class AuditJob(Job):
    """The audit as a job: :class:`~diffinv.jobs.items.TrainingItem` (first), :class:`UtilityItem` and
    :class:`AttackItem`; each becomes its records (:meth:`records`), and :meth:`report` writes the report.
    The arguments are those of :func:`run_audit`."""

    desc = "audit"

    def __init__(
        self,
        target,
        images,
        sources,
        layers,
        defenses,
        methods,
        out_dir,
        *,
        seeds,
        batch_size,
        settings,
        overwrite,
        progress,
        state,
        labels,
        judge,
        train_images=None,
        train_labels=None,
        defense_training=None,
        utility=None,
    ):
        # 1. Check inputs
        if len(sources) != len(images):
            raise ValueError(f"`sources` has {len(sources)} names for {len(images)} images.")
        if not defenses:
            raise ValueError("`defenses` is empty; give at least one setting (e.g. none).")
        if not layers:
            raise ValueError("`layers` is empty; give at least one split point.")
        self.defenses = list(dict.fromkeys(defenses))
        self.label_values = labels_tensor(labels, len(images))
        self.target, self.device = place(target, state)
        self.judge = judge.to(self.device) if judge is not None else None
        self.size = tuple(images.shape[-2:])
        self.trained = trained_methods(methods, self.target, self.size, progress)
        self.inverters = {
            m: f if isinstance(f, Inverter) else f(self.target)
            for m, f in methods.items()
            if not isinstance(f, TrainConfig)
        }
        self.factories = {m: f for m, f in methods.items() if not isinstance(f, (Inverter, TrainConfig))}
        self.learned = [d.spec for d in self.defenses if d.learned]
        extra = self._learned_settings(train_images, train_labels, defense_training, utility)
        for inverter in self.inverters.values():
            inverter.check_image_size(self.size)
        self.names, self.specs = list(methods), [d.spec for d in self.defenses]
        self.by_spec = dict(zip(self.specs, self.defenses))
        self.sources, self.layers, self.seeds, self.batch_size = list(sources), list(layers), list(seeds), batch_size
        self.state = state
        # 2. Run store
        manifest = item_settings(
            self.target,
            images,
            sources,
            layers,
            seeds,
            batch_size,
            self.device,
            defenses=self.specs,
            methods={
                **{n: inv.settings() for n, inv in self.inverters.items()},
                **{
                    n: {"method": n, "training": template_settings(template)}
                    for n, (_, template) in self.trained.items()
                },
            },
            attackers=list(ATTACKERS),
            labels=self.label_values,
            judge=self.judge,
        )
        manifest.update(extra)
        folders = tuple(f"{template.kind}s" for _, template in self.trained.values())
        self.store = RunStore(
            out_dir,
            "audit",
            {**manifest, **dict(settings or {})},
            overwrite=overwrite,
            outputs=tuple(dict.fromkeys(OUTPUTS + folders)),
            state=state,
        )
        self.out_dir = self.store.folder
        self.main = state is None or state.is_main_process
        self.show = progress and (state is None or state.is_local_main_process)
        self.files = unique_names(sources)
        self.images = images.to(self.device)
        self.cache = LayerCache()
        self.models: dict = {}  # (method, known defense) -> the inverter of the models trained for it
        self.deployments: dict = {}  # (layer, spec) -> its Deployment
        self.originals_scored: dict = {}  # per batch of images: the target's and the judge's outputs on the originals

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

    @functools.cached_property
    def lpips(self) -> LPIPS:
        """The LPIPS metric, made after the trainings (as the audit always has: they leave the global RNG where
        they leave it)."""
        return LPIPS()

    # ------------------------------------------------------------------ the items
    def adaptive(self, method: str) -> bool:
        """Whether ``method`` has an adaptive attacker: it optimizes through a feature transform, or the audit
        trains its model on the defended features."""
        return method in self.trained or self.inverters[method].config.accepts_feature_transform

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

    def deployment(self, layer: str, spec: str) -> Deployment:
        """The setting as the client runs it at ``layer`` (a learned one from its trained state), made once."""
        if (layer, spec) not in self.deployments:
            defense = self.by_spec[spec]
            state = TrainedState.load(defense_folder(self.out_dir, spec, layer)) if defense.learned else None
            self.deployments[layer, spec] = defense.deployment(self.target, layer, state)
        return self.deployments[layer, spec]

    def items(self) -> list:
        """Utility per (layer, defense, chunk); attacks per (layer, defense, method, attacker, seed, chunk)."""
        work = []
        for layer in self.layers:
            for spec in self.specs:
                work += [UtilityItem(layer, spec, chunk) for chunk in chunks(len(self.images), self.batch_size)]
                attackers = ATTACKERS if self.by_spec[spec] else ("naive",)
                for method in self.names:
                    for attacker in attackers:
                        if attacker == "adaptive" and not self.adaptive(method):
                            continue
                        work += [
                            AttackItem(layer, spec, method, attacker, seed, chunk)
                            for seed in self.seeds
                            for chunk in chunks(len(self.images), self.batch_size)
                        ]
        return work

    key = staticmethod(_key)

    def keys(self, item) -> list[tuple]:
        if isinstance(item, TrainingItem):
            return [("training", item.layer, item.defense, item.method, "", 0, "")]
        if isinstance(item, UtilityItem):
            return [("utility", item.layer, item.defense, "", "", 0, self.sources[i]) for i in item.images]
        return [
            ("attack", item.layer, item.defense, item.method, item.attacker, item.seed, self.sources[i])
            for i in item.images
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

    def records(self, item) -> Iterator[dict]:
        if isinstance(item, TrainingItem):
            return self._train_defense(item) if item.kind == DEFENSE else self._train(item)
        if isinstance(item, UtilityItem):
            return self._utility(item)
        return self._attack(item)

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

    def _features(self, layer: str, spec: str, chunk: range):
        """The clean and the defended features of a chunk (the defense drawn by the chunk's own seed)."""

        def extract():
            clean = FeatureSet.extract(
                self.target, self.images[chunk.start : chunk.stop], layer, sources=[self.sources[i] for i in chunk]
            )
            generator = torch.Generator().manual_seed(_defense_seed(layer, spec, chunk.start))
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

    def _attack(self, item: AttackItem) -> Iterator[dict]:
        chunk, spec, device = item.images, item.defense, self.device
        _, defended = self._features(item.layer, spec, chunk)
        inverter, generator = self._inverter(item), torch.Generator().manual_seed(item.seed)
        through = {}
        if item.attacker == "adaptive" and item.method in self.inverters:
            draws = torch.Generator().manual_seed(_defense_seed(item.layer, spec, chunk.start) + 1 + item.seed)
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

    # ------------------------------------------------------------------ the report
    def report(self) -> dict:
        """6. The report (main process): the run's own records only (the last of an item recorded twice), said
        in notes."""
        own = {k for item in [*self.defense_trainings(), *self.trainings(), *self.items()] for k in self.keys(item)}
        notes: list[str] = []
        records = merge_records(self.store.records(), _key, own=own, notes=notes)
        frontier = None
        if self.accuracy or self.learned:
            frontier = {
                "learned": self.learned,
                "baseline": [d.spec for d in self.defenses if d.baseline],
                "utility": "accuracy" if self.accuracy else "agreement",
            }
        report = build_report(
            records,
            self.layers,
            self.specs,
            self.names,
            [m for m in self.names if self.adaptive(m)],
            meta={
                "target": self.target.name,
                "image_size": list(self.size),
                "images": len(self.sources),
                "seeds": self.seeds,
                "lpips": self.lpips.reason or "alexnet",
                "device": str(self.device),
                "judge": self.judge.name if self.judge is not None else None,
            },
            frontier=frontier,
        )
        report["notes"] = notes + report["notes"]
        if self.main:
            self._write(report)
        if self.state is not None:
            self.state.wait_for_everyone()
        return report

    def _write(self, report: dict) -> None:
        out_dir = self.out_dir
        for note in report["notes"]:
            warnings.warn(f"{str(out_dir / 'records.jsonl')!r}: {note}", stacklevel=4)
        write_json(out_dir / "report.json", {"config": self.store.settings, **report})
        write_report_md(report, out_dir / "report.md")
        write_privacy_utility_plot(
            report["settings"],
            out_dir / "privacy_utility.png",
            layers=self.layers,
            methods=self.names,
            **({"frontier": report["frontier"]} if "frontier" in report else {}),
        )
        columns = [f"{m} {a}" for m in self.names for a in ATTACKERS]
        for layer in self.layers:
            write_grid(
                self.images,
                self.specs,
                columns,
                lambda spec, column, layer=layer: _grid_file(
                    out_dir, layer, spec, column, self.seeds[0], self.files[0]
                ),
                out_dir / f"grid_{layer}.png",
            )


def _grid_file(out_dir, layer, spec, column, seed, name) -> Path:
    method, attacker = column.rsplit(" ", 1)
    path = audit_image_path(out_dir, layer, spec, method, attacker, seed, name)
    if attacker == "adaptive" and spec == "none":  # no defense: the adaptive attacker is the naive one
        path = audit_image_path(out_dir, layer, spec, method, "naive", seed, name)
    return path


def _finite_or_zero(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _with_interval(summary: dict, key: str, records: Sequence[Mapping], metric: str) -> int:
    """``summary[key]``: the mean over images (each the mean of its seeds) of ``metric``, ``None`` without
    values; ``summary[key + "_ci"]``: its 95 % bootstrap interval ``[low, high]`` over images. Values that are
    not finite numbers are left out (``summary[key + "_n"]``: the images in the mean); returns how many."""
    by_image, excluded = finite_per_image(records, metric)
    values = list(by_image.values())
    mean, low, high = bootstrap_ci(values) if values else (None, None, None)
    summary[key], summary[f"{key}_ci"] = mean, (None if mean is None else [low, high])
    if excluded:
        summary[f"{key}_n"] = len(values)
    return excluded


def build_report(
    records: Sequence[Mapping],
    layers: Sequence[str],
    specs: Sequence[str],
    methods: Sequence[str],
    adaptive: Sequence[str] = (),
    meta: Mapping | None = None,
    frontier: Mapping | None = None,
) -> dict:
    """The audit's summary of ``records``: per (layer, defense setting) the utility and, per method and
    attacker, the mean metrics; per layer the setting that keeps utility >= 0.9 with the lowest best
    attack PSNR; the cost in seconds. ``adaptive``: the methods that have an adaptive attacker (the others
    say why not).

    Every mean is over images (each the mean of its seeds), with its 95 % bootstrap interval over images
    beside it (``METRIC_ci``: ``[low, high]``); ``n`` counts the images. Values that are not finite numbers are
    left out of the mean (``METRIC_n``: the images in it) and said in ``notes``.

    ``frontier`` (``{"learned": [spec, ...], "baseline": [spec, ...], "utility": "accuracy" | "agreement"}``, given
    for an audit with learned settings or utility on true labels): each row also gets its ``accuracy`` and
    ``agreement`` and its *leak*, the best attack's judge accuracy (:func:`frontier_report`), and the report a
    ``frontier`` section."""
    left_out: dict[str, list[str]] = {}  # metric -> where values were left out
    rows = [_setting_row(records, layer, spec, methods, adaptive, left_out) for layer in layers for spec in specs]

    def seconds(kind):  # a value that is not a finite number counts 0
        return sum(_finite_or_zero(r.get("seconds")) for r in records if r["kind"] == kind)

    cost = {
        "attack_seconds": seconds("attack"),
        "utility_seconds": seconds("utility"),
        "decoder_training_seconds": seconds("training"),
    }
    notes = []
    if left_out:
        notes.append(
            "Left out of the means, not a finite number (NaN, infinite or not a number): "
            + "; ".join(f"{metric} ({', '.join(dict.fromkeys(where))})" for metric, where in left_out.items())
            + "."
        )
    report = {
        "meta": dict(meta or {}),
        "utility_threshold": UTILITY_THRESHOLD,
        "settings": rows,
        "recommendation": _recommendations(rows, layers),
        "cost_seconds": cost,
        "notes": notes,
    }
    if frontier is not None:
        cost["defense_training_seconds"] = sum(
            _finite_or_zero(r.get("seconds"))
            for r in records
            if r["kind"] == "training" and r.get("method") == DEFENSE
        )
        cost["decoder_training_seconds"] -= cost["defense_training_seconds"]
        report["frontier"] = frontier_report(records, rows, layers, frontier)
    return report


LEAK_METRICS = ("judge_accuracy", "top1_accuracy", "top1_agreement")  # the leak: the first the records have


def _per_image(
    records: Sequence[Mapping], kind: str, layer: str, spec: str, metric: str, method: str = "", attacker: str = ""
) -> dict[str, float]:
    group = [
        r
        for r in records
        if r["kind"] == kind
        and r["layer"] == layer
        and r["defense"] == spec
        and (kind != "attack" or (r["method"] == method and r["attacker"] == attacker))
    ]
    return finite_per_image(group, metric)[0]


def frontier_report(
    records: Sequence[Mapping], rows: Sequence[dict], layers: Sequence[str], frontier: Mapping
) -> dict:
    """The privacy-utility frontier of every setting, fixed and learned (its rows get ``accuracy``, ``agreement``,
    ``leak``, ``leak_ci`` and ``leak_attack``):

    * ``leak``: the *best attack's* judge accuracy (the method and attacker with the highest mean; without a judge
      the target's accuracy on the reconstructions, without labels its agreement: :data:`LEAK_METRICS`);
    * per layer, ``pareto``: the settings no other one beats in both utility (higher) and leak (lower);
    * ``verdict``: for a utility loss of at most 1, 5 and 10 points (:data:`LOSS_BUDGETS`) below no defense, the
      setting with the lowest leak, with its intervals;
    * ``versus_baseline``: every learned setting against every plain-noise one (``frontier["baseline"]``), paired
      on the same images: the leak's and the utility's differences with their bootstrap intervals, and whether
      the learned one *beats* it (its leak lower, the interval below 0, at no lower mean utility).
    """
    metric = next(
        (m for m in LEAK_METRICS if any(r.get(m) is not None for r in records if r["kind"] == "attack")),
        LEAK_METRICS[-1],
    )
    out = {
        "utility": frontier["utility"],
        "leak_metric": metric,
        "learned": list(frontier["learned"]),
        "baseline": list(frontier["baseline"]),
        "layers": {},
    }
    for row in rows:
        util = [
            r
            for r in records
            if r["kind"] == "utility" and r["layer"] == row["layer"] and r["defense"] == row["defense"]
        ]
        for key in ("accuracy", "agreement"):
            _with_interval(row, key, util, key)
        best = max(
            (
                (m, a, e[a][metric])
                for m, e in row["attacks"].items()
                for a in ATTACKERS
                if e.get(a) and e[a].get(metric) is not None
            ),
            key=lambda t: t[2],
            default=None,
        )
        row["leak"], row["leak_ci"], row["leak_attack"] = None, None, None
        if best is not None:
            row["leak"], row["leak_ci"] = best[2], row["attacks"][best[0]][best[1]].get(f"{metric}_ci")
            row["leak_attack"] = f"{best[0]} {best[1]}"
    for layer in layers:
        mine = [r for r in rows if r["layer"] == layer and r["utility"] is not None and r["leak"] is not None]
        pareto = [
            r["defense"]
            for r in mine
            if not any(
                o["utility"] >= r["utility"]
                and o["leak"] <= r["leak"]
                and (o["utility"], o["leak"]) != (r["utility"], r["leak"])
                for o in mine
            )
        ]
        reference = next((r for r in mine if r["defense"] == "none"), None)
        verdict = []
        for budget in LOSS_BUDGETS:
            ok = [] if reference is None else [r for r in mine if r["utility"] >= reference["utility"] - budget - 1e-9]
            best = min(ok, key=lambda r: (r["leak"], -r["utility"]), default=None)
            verdict.append(
                {
                    "max_loss": budget,
                    "defense": None if best is None else best["defense"],
                    **(
                        {}
                        if best is None
                        else {k: best.get(k) for k in ("utility", "utility_ci", "leak", "leak_ci", "leak_attack")}
                    ),
                }
            )
        versus = []
        for learned in (r for r in mine if r["defense"] in frontier["learned"]):
            for base in (r for r in mine if r["defense"] in frontier["baseline"]):
                versus.append(_paired(records, layer, learned, base, metric))
        out["layers"][layer] = {
            "pareto": pareto,
            "verdict": verdict,
            "versus_baseline": versus,
            "learned_beats_baseline": any(v["beats"] for v in versus),
        }
    return out


def _paired(records, layer: str, learned: Mapping, base: Mapping, metric: str) -> dict:
    """A learned setting against a baseline one, paired on the images both have: leak and utility differences."""

    def leak(row):
        method, attacker = row["leak_attack"].split(" ")
        source = "naive" if row["defense"] == "none" else attacker
        return _per_image(records, "attack", layer, row["defense"], metric, method, source)

    a_leak, b_leak = leak(learned), leak(base)
    a_util = _per_image(records, "utility", layer, learned["defense"], "utility")
    b_util = _per_image(records, "utility", layer, base["defense"], "utility")
    images = sorted(set(a_leak) & set(b_leak))
    leak_diff = (
        paired_difference_ci([a_leak[i] for i in images], [b_leak[i] for i in images])
        if images
        else (None, None, None)
    )
    shared = sorted(set(a_util) & set(b_util))
    util_diff = (
        paired_difference_ci([a_util[i] for i in shared], [b_util[i] for i in shared])
        if shared
        else (None, None, None)
    )
    beats = leak_diff[0] is not None and leak_diff[2] < 0 and util_diff[0] is not None and util_diff[0] >= 0
    return {
        "learned": learned["defense"],
        "baseline": base["defense"],
        "n": len(images),
        "leak_difference": leak_diff[0],
        "leak_difference_ci": None if leak_diff[0] is None else list(leak_diff[1:]),
        "utility_difference": util_diff[0],
        "utility_difference_ci": None if util_diff[0] is None else list(util_diff[1:]),
        "beats": bool(beats),
    }


def _setting_row(
    records: Sequence[Mapping], layer: str, spec: str, methods: Sequence[str], adaptive: Sequence[str], left_out: dict
) -> dict:
    """The report's row of one (layer, defense setting): its utility and, per method and attacker, the means
    (where values were left out: added to ``left_out``)."""
    util = [r for r in records if r["kind"] == "utility" and r["layer"] == layer and r["defense"] == spec]
    row = {
        "layer": layer,
        "defense": spec,
        "utility_n": len({r["image"] for r in util}),
        "utility_reason": next((r["reason"] for r in util if r.get("reason")), None),
        "attacks": {},
    }
    if _with_interval(row, "utility", util, "utility"):
        left_out.setdefault("utility", []).append(f"{layer} {spec}")
    for method in methods:
        entry = {}
        for attacker in ATTACKERS:
            source = "naive" if spec == "none" else attacker
            group = [
                r
                for r in records
                if r["kind"] == "attack"
                and r["layer"] == layer
                and r["defense"] == spec
                and r["method"] == method
                and r["attacker"] == source
            ]
            entry[attacker] = None
            if group:
                entry[attacker] = {
                    "n": len({r["image"] for r in group}),
                    "seeds": len({r.get("seed", 0) for r in group}),
                }
                for metric in METRICS:
                    if _with_interval(entry[attacker], metric, group, metric):
                        left_out.setdefault(metric, []).append(f"{layer} {spec} {method} {source}")
        reason = None if spec == "none" else _adaptive_reason(method, method in adaptive)
        if reason:
            entry["adaptive_reason"] = reason
        row["attacks"][method] = entry
    for key, metric in (("best_attack_psnr", "psnr"), ("best_attack_top1", "top1_agreement")):
        values = [
            a[metric]
            for e in row["attacks"].values()
            for k, a in e.items()
            if k in ATTACKERS and a and a[metric] is not None
        ]
        row[key] = max(values) if values else None
    return row


def _recommendations(rows: Sequence[Mapping], layers: Sequence[str]) -> dict:
    """Per layer, the setting that keeps utility >= :data:`UTILITY_THRESHOLD` with the lowest best attack PSNR."""
    recommendation = {}
    for layer in layers:
        mine = [r for r in rows if r["layer"] == layer]
        reference = next((r for r in mine if r["defense"] == "none"), None)
        ok = [
            r
            for r in mine
            if r["utility"] is not None and r["utility"] >= UTILITY_THRESHOLD and r["best_attack_psnr"] is not None
        ]
        best = min(ok, key=lambda r: r["best_attack_psnr"], default=None)
        recommendation[layer] = (
            None
            if best is None
            else {
                "defense": best["defense"],
                "utility": best["utility"],
                "best_attack_psnr": best["best_attack_psnr"],
                "psnr_drop": (reference["best_attack_psnr"] - best["best_attack_psnr"])
                if reference and reference["best_attack_psnr"] is not None
                else None,
            }
        )
    return recommendation


def write_report_md(report: Mapping, path) -> str:
    """``report.md``: one table per layer (defense x method: utility, naive / adaptive PSNR, SSIM, top-1), each
    mean with its 95 % bootstrap interval over images and the number of images; the accuracy against true labels
    and the judge's scores when the records have them."""
    lines = ["# Privacy audit", ""]
    meta = report.get("meta", {})
    if meta:
        lines += [
            f"Target `{meta.get('target')}`, {meta.get('images')} images at {meta.get('image_size')}, seeds "
            f"{meta.get('seeds')}, device {meta.get('device')}. Utility = top-1 agreement of the network run "
            f"from "
            f"the defended features with the undefended network; attack top-1 = agreement of the "
            f"reconstruction's class. naive / adaptive = attacker unaware of / aware of the defense. "
            f"Each value: mean [95 % bootstrap interval over images]; n = images (each the mean of its seeds).",
            "",
        ]
        if meta.get("lpips") != "alexnet":
            lines += [f"{meta.get('lpips')}.", ""]
    semantic = [
        m
        for m in METRICS
        if m in SEMANTIC_METRICS
        and m != "top1_agreement"
        and any(
            (a or {}).get(m) is not None
            for row in report["settings"]
            for e in row["attacks"].values()
            for k, a in e.items()
            if k in ATTACKERS
        )
    ]
    for layer in dict.fromkeys(r["layer"] for r in report["settings"]):
        rows = [r for r in report["settings"] if r["layer"] == layer]
        lines += _layer_table(layer, rows)
        if semantic:
            lines += _semantic_table(rows, semantic, meta.get("judge"))
        lines += ["", _recommendation(report["recommendation"].get(layer), report["utility_threshold"]), ""]
        if "frontier" in report:
            lines += _frontier_tables(layer, rows, report["frontier"])
    cost = report["cost_seconds"]
    defense_cost = (
        f", {cost['defense_training_seconds']:.0f} s of defense training" if "defense_training_seconds" in cost else ""
    )
    lines.append(
        f"Cost: {cost['attack_seconds']:.0f} s of attacks, {cost['utility_seconds']:.1f} s of utility, "
        f"{cost['decoder_training_seconds']:.0f} s of decoder training{defense_cost}."
    )
    if report.get("notes"):
        lines += ["", "Records: " + " ".join(report["notes"])]
    text = "\n".join(lines) + "\n"
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def _frontier_tables(layer: str, rows: Sequence[Mapping], frontier: Mapping) -> list[str]:
    """A layer's utility (accuracy, agreement), frontier, verdict and learned-versus-noise tables."""
    mine = frontier["layers"].get(layer, {})
    leak = {
        "judge_accuracy": "the judge's accuracy",
        "top1_accuracy": "the target's accuracy",
        "top1_agreement": "the target's top-1 agreement",
    }[frontier["leak_metric"]]
    lines = [
        f"### {layer}: privacy-utility frontier",
        "",
        f"Utility = the defended deployment's top-1 {frontier['utility']}"
        + (
            " on the true labels (agreement with the undefended network beside it)"
            if frontier["utility"] == "accuracy"
            else " with the undefended network"
        )
        + f"; leak = the best attack's reconstructions scored by {leak}. * = on the Pareto frontier.",
        "",
        "| defense | utility accuracy | utility agreement | leak | best attack |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " *" if row["defense"] in mine.get("pareto", ()) else ""
        lines.append(
            f"| {row['defense']}{mark} | {_fmt(row, 'accuracy')} | {_fmt(row, 'agreement')} | "
            f"{_fmt(row, 'leak')} | {row.get('leak_attack') or 'n/a'} |"
        )
    lines += [
        "",
        "Verdict: the setting that leaves the strongest attack the least, for a utility loss of at most:",
        "",
        "| utility loss | defense | utility | leak | best attack |",
        "|---|---|---|---|---|",
    ]
    for v in mine.get("verdict", ()):
        lines.append(
            f"| {100 * v['max_loss']:.0f} points | {v['defense'] or 'n/a'} | {_fmt(v, 'utility')} | "
            f"{_fmt(v, 'leak')} | {v.get('leak_attack') or 'n/a'} |"
        )
    if mine.get("versus_baseline"):
        lines += [
            "",
            "Learned defenses against plain noise, paired on the same images (learned minus noise):",
            "",
            "| learned | noise | n | leak difference | utility difference | beats noise |",
            "|---|---|---|---|---|---|",
        ]
        for v in mine["versus_baseline"]:
            lines.append(
                f"| {v['learned']} | {v['baseline']} | {v['n']} | {_fmt(v, 'leak_difference')} | "
                f"{_fmt(v, 'utility_difference')} | {'yes' if v['beats'] else 'no'} |"
            )
        lines += [
            "",
            "A learned defense beats plain noise at this layer: "
            + (
                "**yes**."
                if mine["learned_beats_baseline"]
                else "no (no lower leak with an interval below 0 at no lower utility)."
            ),
        ]
    return lines + [""]


def _fmt(summary, key, digits=2) -> str:
    """A mean with its interval (and its n where values were left out), or ``n/a``."""
    value = (summary or {}).get(key)
    if value is None:
        return "n/a"
    low, high = summary.get(f"{key}_ci") or [value, value]
    counted = summary.get(f"{key}_n")  # only where values were left out as not finite
    return format_ci(value, low, high, digits) + ("" if counted is None else f" (n = {counted})")


def _layer_table(layer: str, rows: Sequence[Mapping]) -> list[str]:
    """A layer's table: per defense setting and method, utility and both attackers' PSNR, SSIM and top-1."""
    lines = [
        f"## {layer}",
        "",
        "| defense | utility | method | n | PSNR naive | PSNR adaptive | SSIM naive | "
        "SSIM adaptive | top-1 naive | top-1 adaptive | s / image (adaptive) |",
        "|" + "---|" * 11,
    ]
    for row in rows:
        for method, entry in row["attacks"].items():
            n, a = entry.get("naive") or {}, entry.get("adaptive") or {}
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["defense"],
                        _fmt(row, "utility"),
                        method,
                        str(n.get("n", a.get("n", 0))),
                        _fmt(n, "psnr"),
                        _fmt(a, "psnr"),
                        _fmt(n, "ssim", 3),
                        _fmt(a, "ssim", 3),
                        _fmt(n, "top1_agreement"),
                        _fmt(a, "top1_agreement"),
                        _fmt(a if a.get("seconds") is not None else n, "seconds"),
                    ]
                )
                + " |"
            )
        if row["utility_reason"]:
            lines.append(f"| {row['defense']} | n/a: {row['utility_reason']} |" + " |" * 9)
    return lines


def _semantic_table(rows: Sequence[Mapping], semantic: Sequence[str], judge: str | None) -> list[str]:
    """A layer's table of the accuracy against true labels and the judge's scores."""
    titles = {
        "original_top1_accuracy": "target acc. (originals)",
        "top1_accuracy": "target acc. (recon.)",
        "judge_original_accuracy": "judge acc. (originals)",
        "judge_accuracy": "judge acc. (recon.)",
        "judge_agreement": "judge agr.",
        "judge_similarity": "judge feature cos.",
    }
    lines = [
        "",
        "True labels" + (f" and the judge `{judge}` (a network the attack never saw)" if judge else "") + ":",
        "",
        "| defense | method | attacker | n | " + " | ".join(titles[m] for m in semantic) + " |",
        "|" + "---|" * (4 + len(semantic)),
    ]
    for row in rows:
        for method, entry in row["attacks"].items():
            for attacker in ATTACKERS if row["defense"] != "none" else ("naive",):
                summary = entry.get(attacker)
                if summary:
                    lines.append(
                        "| "
                        + " | ".join(
                            [
                                row["defense"],
                                method,
                                attacker,
                                str(summary["n"]),
                                *(_fmt(summary, m, 3 if m == "judge_similarity" else 2) for m in semantic),
                            ]
                        )
                        + " |"
                    )
    return lines


def _recommendation(rec: Mapping | None, threshold: float) -> str:
    """The sentence under a layer's tables: the setting that keeps utility and lowers the best attack most."""
    if rec and rec["defense"] == "none" or rec and rec["psnr_drop"] is not None and rec["psnr_drop"] <= 0:
        return (
            f"No defense setting that keeps utility >= {threshold} lowers the best "
            f"attack's PSNR below no defense ({rec['best_attack_psnr']:.2f} dB)."
        )
    if rec:
        drop = "" if rec["psnr_drop"] is None else f", {rec['psnr_drop']:.2f} dB below no defense"
        return (
            f"Keeping utility >= {threshold}: **{rec['defense']}** (utility "
            f"{rec['utility']:.2f}) brings the best attack's PSNR down most, to "
            f"{rec['best_attack_psnr']:.2f}"
            f" dB{drop}."
        )
    return f"No setting keeps utility >= {threshold} (or utility is unavailable)."
