"""Defenses of a split point: small feature transforms with a strength, composable.

A split-computing deployment ships the features of layer L off the device; a defense transforms them first.
Each family is one unit, one module (its transform, the strengths it accepts, whether it is random, what an
attacker reads from its output): ``noise``, ``quantize``, ``prune``, ``topk``, and the learned ``nopeek``,
``shredder``, ``adversarial``, which train on labelled images (:meth:`Defense.train`, each with its own
objective in its module; the shared machinery in :mod:`diffinv.defenses.training`) and are applied through
their :class:`Deployment`. Settings, their composition ``A+B`` and parsing: :mod:`diffinv.defenses.spec`;
the families' base and plugins: :mod:`diffinv.defenses.base`; utility: :mod:`diffinv.defenses.utility`.

Example:
    >>> defense = parse_defense("prune:0.5+noise:0.1")
    >>> defended = defense(features, generator=torch.Generator().manual_seed(0))
    >>> defense.spec
    'prune:0.5+noise:0.1'
"""

from .adversarial import fresh_adversary_error, train_adversarial
from .base import DefenseFamily
from .nopeek import distance_correlation, train_nopeek
from .shredder import shredder_noise, train_shredder
from .spec import DEFENSES, Defense, Deployment, apply_defense, parse_defense, parse_defenses
from .training import DefenseTrainConfig, TrainedState, client_parameter_names, defended_copy
from .utility import UtilityUnavailable, utility_agreement, utility_scores

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseFamily",
    "DefenseTrainConfig",
    "Deployment",
    "TrainedState",
    "UtilityUnavailable",
    "apply_defense",
    "client_parameter_names",
    "defended_copy",
    "distance_correlation",
    "fresh_adversary_error",
    "parse_defense",
    "parse_defenses",
    "shredder_noise",
    "train_adversarial",
    "train_nopeek",
    "train_shredder",
    "utility_agreement",
    "utility_scores",
]
