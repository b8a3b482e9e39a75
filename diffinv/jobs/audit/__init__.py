"""Privacy audit of a split point: per layer and defense setting (:mod:`diffinv.defenses`), the deployment's
utility and every method's attack success, for a *naive* attacker (unaware of the defense) and an *adaptive*
one (it optimizes through the defense, or its model is trained on defended features).

The run folder is a run store (:mod:`diffinv.jobs.store`) of work items run by the job protocol's runner
(:func:`~diffinv.jobs.items.run_job`): the trainings first (:mod:`.trainings`), then the utility
(:mod:`.utility`) and the attacks (:mod:`.attacks`); the main process writes ``report.json``, ``report.md``
(:mod:`.report`, :mod:`.summary`, :mod:`.frontier`), ``privacy_utility.png`` and ``grid_LAYER.png``.

Example:
    >>> report = run_audit(target, images, names, ["blocks.1"], parse_defenses(["none", "noise:0.3"]),
    ...                    {"pixel": PixelInverter}, out_dir="audit_out")
    >>> report["settings"][1]["utility"], report["settings"][1]["attacks"]["pixel"]["adaptive"]["psnr"]
"""

from .frontier import LEAK_METRICS, LOSS_BUDGETS, frontier_report
from .items import (
    ATTACKERS,
    AttackItem,
    UtilityItem,
    audit_image_path,
    audit_key,
    decoder_folder,
    defense_folder,
    model_folder,
)
from .job import OUTPUTS, AuditJob, run_audit
from .report import build_report, write_report_md
from .summary import METRICS, UTILITY_THRESHOLD
from .trainings import trained_methods, training_record

__all__ = [
    "ATTACKERS",
    "LEAK_METRICS",
    "LOSS_BUDGETS",
    "METRICS",
    "OUTPUTS",
    "UTILITY_THRESHOLD",
    "AttackItem",
    "AuditJob",
    "UtilityItem",
    "audit_image_path",
    "audit_key",
    "build_report",
    "decoder_folder",
    "defense_folder",
    "frontier_report",
    "model_folder",
    "run_audit",
    "trained_methods",
    "training_record",
    "write_report_md",
]
