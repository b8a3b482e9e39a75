"""The audit as a job of work items (:class:`AuditJob`): its run store, its items in their fixed order (the
trainings first), the records of each (:mod:`.trainings`, :mod:`.utility`, :mod:`.attacks`) and the report
that the main process writes; :func:`run_audit` runs it."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from ...defenses import Defense
from ...defenses.training import DefenseTrainConfig
from ...inverters import Inverter
from ...io import write_json
from ...judge import Judge, labels_tensor
from ...metrics import LPIPS
from ...targets import TargetNetwork
from ..bench import DEFAULT_BATCH_SIZE, chunks
from ..figures import write_grid, write_privacy_utility_plot
from ..items import Job, LayerCache, TrainingItem, place, run_job
from ..records import item_settings, merge_records
from ..store import RunStore, unique_names
from ..training import TrainConfig, template_settings
from .attacks import AttackMixin
from .items import ATTACKERS, DEFENSE, AttackItem, UtilityItem, audit_image_path, audit_key
from .report import build_report, write_report_md
from .trainings import TrainingMixin, trained_methods
from .utility import UtilityMixin

__all__ = ["AuditJob", "run_audit"]

OUTPUTS = ("images", "decoders", "report.json", "report.md", "privacy_utility.png")


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


class AuditJob(TrainingMixin, UtilityMixin, AttackMixin, Job):
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
        self.store = self._open_store(images, out_dir, settings, overwrite, extra)
        self.out_dir = self.store.folder
        self.main = state is None or state.is_main_process
        self.show = progress and (state is None or state.is_local_main_process)
        self.files = unique_names(sources)
        self.images = images.to(self.device)
        self.cache = LayerCache()
        self.models: dict = {}  # (method, known defense) -> the inverter of the models trained for it
        self.deployments: dict = {}  # (layer, spec) -> its Deployment
        self.originals_scored: dict = {}  # per batch of images: the target's and the judge's outputs on the originals

    def _open_store(self, images, out_dir, settings, overwrite, extra: dict) -> RunStore:
        """The audit's run store: the manifest of every setting (``extra``: the learned settings' entries)."""
        manifest = item_settings(
            self.target,
            images,
            self.sources,
            self.layers,
            self.seeds,
            self.batch_size,
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
        return RunStore(
            out_dir,
            "audit",
            {**manifest, **dict(settings or {})},
            overwrite=overwrite,
            outputs=tuple(dict.fromkeys(OUTPUTS + folders)),
            state=self.state,
        )

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

    key = staticmethod(audit_key)

    def keys(self, item) -> list[tuple]:
        if isinstance(item, TrainingItem):
            return [("training", item.layer, item.defense, item.method, "", 0, "")]
        if isinstance(item, UtilityItem):
            return [("utility", item.layer, item.defense, "", "", 0, self.sources[i]) for i in item.images]
        return [
            ("attack", item.layer, item.defense, item.method, item.attacker, item.seed, self.sources[i])
            for i in item.images
        ]

    def records(self, item) -> Iterator[dict]:
        if isinstance(item, TrainingItem):
            return self._train_defense(item) if item.kind == DEFENSE else self._train(item)
        if isinstance(item, UtilityItem):
            return self._utility(item)
        return self._attack(item)

    # ------------------------------------------------------------------ the report
    def report(self) -> dict:
        """6. The report (main process): the run's own records only (the last of an item recorded twice), said
        in notes."""
        own = {k for item in [*self.defense_trainings(), *self.trainings(), *self.items()] for k in self.keys(item)}
        notes: list[str] = []
        records = merge_records(self.store.records(), audit_key, own=own, notes=notes)
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
