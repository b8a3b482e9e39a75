"""Defense settings: the families (:data:`DEFENSES`), a setting of them (:class:`Defense`), its spec and parsing.

A setting is ``none``, one family with its strength (``noise:0.1``) or a composition ``A+B`` applied left to
right (``prune:0.5+noise:0.1``); a learned family stands alone in a setting. On the command line a family
takes several strengths, one setting each: ``noise:0.1,0.3,1.0`` (:func:`parse_defenses`). Every setting has
a :class:`Deployment`: the client network that ships the features and their transform. :data:`DEFENSES`
holds the built-in families and those that installed packages add through the entry-point group
``diffinv.defenses`` (:mod:`diffinv.plugins`; each entry point names a :class:`DefenseFamily`), read on
first use.

Example:
    >>> defense = parse_defense("prune:0.5+noise:0.1")
    >>> defended = defense(features, generator=torch.Generator().manual_seed(0))
    >>> defense.spec
    'prune:0.5+noise:0.1'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..features import FeatureSet
from ..plugins import Units, plugin_errors
from ..targets import TargetNetwork
from .adversarial import ADVERSARIAL
from .base import DefenseFamily
from .noise import NOISE
from .nopeek import NOPEEK
from .prune import PRUNE
from .quantize import QUANTIZE
from .shredder import SHREDDER
from .topk import TOPK
from .training import DefenseTrainConfig, TrainedState

__all__ = ["DEFENSES", "GROUP", "Defense", "Deployment", "apply_defense", "parse_defense", "parse_defenses"]

_BUILT_IN = (NOISE, QUANTIZE, PRUNE, TOPK, NOPEEK, SHREDDER, ADVERSARIAL)
GROUP = "diffinv.defenses"


DEFENSES: Mapping[str, DefenseFamily] = Units(
    GROUP,
    lambda: {family.name: family for family in _BUILT_IN},
    lambda name, unit: isinstance(unit, DefenseFamily) and unit.name == name and name != "none",
    "a DefenseFamily named NAME",
)


@dataclass(frozen=True)
class Defense:
    """A defense setting: transforms applied in order (none: identity).

    Attributes:
        steps: ``((name, strength), ...)``, e.g. ``(("prune", 0.5), ("noise", 0.1))``.
    """

    steps: tuple[tuple[str, float | int], ...] = ()

    @property
    def spec(self) -> str:
        """``"none"``, ``"noise:0.1"``, ``"prune:0.5+noise:0.1"``: what :func:`parse_defense` reads back."""
        return "+".join(f"{name}:{strength:g}" for name, strength in self.steps) or "none"

    @property
    def random(self) -> bool:
        """Whether a draw depends on the generator (noise, pruning masks)."""
        return any(DEFENSES[name].random for name, _ in self.steps)

    @property
    def learned(self) -> bool:
        """Whether the setting trains before it is applied (a learned family, alone in the setting)."""
        return any(DEFENSES[name].learned for name, _ in self.steps)

    @property
    def baseline(self) -> bool:
        """Whether the setting is the plain reference of the frontier (noise only)."""
        return bool(self.steps) and all(DEFENSES[name].baseline for name, _ in self.steps)

    def train(
        self,
        target: TargetNetwork,
        layer: str,
        images: torch.Tensor,
        labels,
        config: DefenseTrainConfig | None = None,
        progress: bool = True,
    ) -> TrainedState:
        """Trains a learned setting on ``images`` ``(N, 3, H, W)`` in [0, 1] with their true ``labels``.

        Raises:
            ValueError: the setting is not learned, or bad images/labels (the message says what is expected).
        """
        if not self.learned:
            raise ValueError(f"defense {self.spec!r} is a fixed transform; nothing to train.")
        ((name, strength),) = self.steps
        state = DEFENSES[name].train(target, layer, strength, images, labels, config or DefenseTrainConfig(), progress)
        state.meta["spec"] = self.spec
        return state

    def deployment(self, target: TargetNetwork, layer: str, state: TrainedState | None = None) -> Deployment:
        """What the client runs under this setting (for a learned one: from its trained ``state``).

        Raises:
            ValueError: a learned setting without its state.
        """
        if not self.learned:
            return Deployment(self, target, None)
        if state is None:
            raise ValueError(f"defense {self.spec!r} is learned: give its trained state (`Defense.train`).")
        ((name, strength),) = self.steps
        client, transform = DEFENSES[name].deploy(target, layer, strength, state)
        return Deployment(self, client, transform)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __str__(self) -> str:
        return self.spec

    def __call__(
        self, features: torch.Tensor, generator: torch.Generator | None = None, *, straight_through: bool = False
    ) -> torch.Tensor:
        """The defended features ``(N, ...)`` (the first dimension is the image).

        Args:
            features: ``(N, C, ...)`` features (``C``: the channels that ``prune`` zeroes).
            generator: draws the noise and pruning masks (``None``: the global RNG).
            straight_through: differentiable for an attacker: quantization and top-k pass the
                gradient of the identity (straight-through estimator).
        """
        for name, strength in self.steps:
            features = DEFENSES[name].transform(features, strength, generator, straight_through)
        return features

    def attacker_transform(self, observed: torch.Tensor, generator: torch.Generator | None = None):
        """What an attacker who knows this defense applies to its candidate features ``(N, ...)``
        before comparing them with the ``observed`` (defended) ones, differentiably.

        Every step is applied with fresh randomness per call and straight-through gradients,
        except a last ``prune`` or ``topk`` step: its zeros survive in ``observed``, so the attacker
        reads which channels / entries were kept and applies that same support (a fresh random
        mask would only add noise to the match); for top-k an entry outside the support counts
        only by how much its magnitude exceeds the smallest kept one (it was dropped for being
        smaller).
        """
        steps = list(self.steps)
        support, threshold = None, None
        if steps and DEFENSES[steps[-1][0]].support is not None:
            name, _ = steps.pop()
            support, threshold = DEFENSES[name].support(observed.detach())
        head = Defense(tuple(steps))

        def transform(features: torch.Tensor) -> torch.Tensor:
            features = head(features, generator, straight_through=True)
            if support is None:
                return features
            mask = support.to(features)
            if threshold is None:
                return features * mask
            excess = features.sign() * torch.relu(features.abs() - threshold.to(features))
            return features * mask + excess * (1 - mask)

        return transform


@dataclass(frozen=True)
class Deployment:
    """A setting as the client runs it: ``target``, the network whose layer ships the features (the fine-tuned
    client of a learned setting, else the target itself), and the transform of those features.

    Attributes:
        defense: the setting.
        target: the client's network.
        transform: a learned setting's ``(features, generator, straight_through) -> features`` (``None``: the
            identity for a learned one; a fixed setting applies itself).
    """

    defense: Defense
    target: TargetNetwork
    transform: Callable | None

    def __call__(
        self, features: torch.Tensor, generator: torch.Generator | None = None, *, straight_through: bool = False
    ) -> torch.Tensor:
        """The shipped features from the client's own features of the layer."""
        if not self.defense.learned:
            return self.defense(features, generator, straight_through=straight_through)
        if self.transform is None:
            return features
        return self.transform(features, generator, straight_through)

    def attacker_transform(self, observed: torch.Tensor, generator: torch.Generator | None = None):
        """What an attacker who knows the deployment applies to its candidate features (as
        :meth:`Defense.attacker_transform`; a learned transform with fresh randomness at every call)."""
        if not self.defense.learned:
            return self.defense.attacker_transform(observed, generator)
        return lambda features: self(features, generator, straight_through=True)


def parse_defense(text: str) -> Defense:
    """One setting: ``none``, ``NAME:STRENGTH`` or a composition ``A+B`` (applied left to right).

    Raises:
        ValueError: an unknown name, a missing or bad strength (the message says what is expected).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"defense {text!r} is empty; expected none or NAME:STRENGTH with NAME one of {', '.join(DEFENSES)}."
        )
    text = text.strip()
    if text == "none":
        return Defense()
    steps = []
    for part in text.split("+"):
        name, _, value = part.partition(":")
        if name in plugin_errors(GROUP) and name not in DEFENSES:
            raise plugin_errors(GROUP)[name]
        if name not in DEFENSES:
            raise ValueError(
                f"defense {text!r}: {name!r} is not a defense; expected none or one of "
                f"{', '.join(DEFENSES)} (NAME:STRENGTH, composed with '+')."
            )
        family = DEFENSES[name]
        if not value:
            raise ValueError(f"defense {text!r}: {name!r} needs a strength, e.g. {name}:{family.example}.")
        if "," in value:
            raise ValueError(
                f"defense {text!r}: a composed setting takes one strength per part; give each "
                f"setting as its own argument."
            )
        try:
            strength = float(value)
        except ValueError:
            strength = math.nan
        if math.isnan(strength) or not family.accept(strength):
            raise ValueError(f"defense {text!r}: the strength of {name!r} must be {family.expected}, got {value!r}.")
        steps.append((name, int(strength) if family.integer else strength))
    if len(steps) > 1 and any(DEFENSES[name].learned for name, _ in steps):
        raise ValueError(
            f"defense {text!r}: a learned defense ({', '.join(n for n, _ in steps if DEFENSES[n].learned)})"
            f" stands alone in a setting; expected no '+' with it."
        )
    return Defense(tuple(steps))


def parse_defenses(tokens: Sequence[str]) -> list[Defense]:
    """Command-line tokens -> settings: ``noise:0.1,0.3`` gives two; duplicates are dropped, order kept.

    Raises:
        ValueError: as :func:`parse_defense`, or no setting at all.
    """
    settings = []
    for token in tokens:
        name, _, values = token.partition(":")
        if "+" not in token and "," in values:
            parsed = [parse_defense(f"{name}:{v}") for v in values.split(",")]
        else:
            parsed = [parse_defense(token)]
        settings += [d for d in parsed if d not in settings]
    if not settings:
        raise ValueError("no defense setting given; expected e.g. none noise:0.1,0.3 quantize:4.")
    return settings


def apply_defense(features: FeatureSet, defense: Defense, generator: torch.Generator | None = None) -> FeatureSet:
    """The FeatureSet a deployment with ``defense`` ships; its ``defense`` field records it (after any earlier one)."""
    if not defense:
        return features
    done = features.defense
    return dataclasses.replace(
        features,
        features=defense(features.features, generator).contiguous(),
        defense=defense.spec if not done or done == "none" else f"{done}+{defense.spec}",
    )
