"""Defenses of a split point: small feature transforms with a strength, composable.

A split-computing deployment ships the features of layer L off the device; a defense transforms
them first. Each transform has one strength:

| spec | transform | strength |
|---|---|---|
| ``none`` | identity | — |
| ``noise:S`` | add Gaussian noise of std ``S`` x the std of each image's features | ``S >= 0`` |
| ``quantize:B`` | each image's features to ``2**B`` uniform levels between their min and max | bits ``B`` in 1..16 |
| ``prune:P`` | zero a random ``round(P * C)`` of the ``C`` channels of each image | ``P`` in [0, 1) |
| ``topk:K`` | keep each image's ``round(K * numel)`` largest-magnitude entries, zero the rest | ``K`` in (0, 1] |
| ``nopeek:A`` | learned: the client layers fine-tuned with task loss + ``A`` x dCor(images, features) | ``A >= 0`` |
| ``shredder:L`` | learned: additive noise, its per-entry mean and scale trained with task loss - ``L`` x mean log scale | ``L >= 0`` |
| ``adversarial:L`` | learned: the client fine-tuned against a decoder adversary, task loss - ``L`` x its MSE | ``L >= 0`` |

A *learned* family (its unit declares ``train`` and ``deploy``) trains on labelled images
(:meth:`Defense.train`, :mod:`diffinv.defense_training`) and is applied through its :class:`Deployment`
(:meth:`Defense.deployment`): the client network that ships the features (fine-tuned, or the target itself)
and the transform of those features. A learned family stands alone in a setting (no ``+``). Every setting
has a :class:`Deployment`; a fixed one's is the target and the transform.

``A+B`` composes them, applied left to right (``prune:0.5+noise:0.1``). On the command line a
family takes several strengths, one setting each: ``noise:0.1,0.3,1.0`` (:func:`parse_defenses`).

Each family is one unit (:class:`DefenseFamily`: its transform, the strengths it accepts, whether it
is random, what an attacker reads from its output); :data:`DEFENSES` holds them and those that
installed packages add through the entry-point group ``diffinv.defenses`` (:mod:`diffinv.plugins`;
each entry point names a :class:`DefenseFamily`), read on first use.

The adaptive attacker differentiates through a defense (``straight_through=True``): the random
ones draw fresh noise/masks at every call (the expectation over the defense's randomness), and
quantization and top-k pass the gradient straight through (the identity's gradient).

:func:`utility_agreement` runs the rest of the network from (defended) features of a layer
(:meth:`TargetNetwork.split_logits <diffinv.targets.TargetNetwork.split_logits>`), for the
deployment's utility.

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

from .defense_training import (
    DefenseTrainConfig,
    TrainedState,
    defended_copy,
    shredder_noise,
    train_adversarial,
    train_nopeek,
    train_shredder,
)
from .features import FeatureSet
from .plugins import Units, plugin_errors
from .targets import SplitUnavailable, TargetNetwork

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseFamily",
    "Deployment",
    "UtilityUnavailable",
    "apply_defense",
    "parse_defense",
    "parse_defenses",
    "utility_agreement",
    "utility_scores",
]


# ---------------------------------------------------------------------- transforms (N, ...) -> (N, ...)
def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def _noise(f: torch.Tensor, sigma: float, generator, straight_through: bool) -> torch.Tensor:
    std = _per_image(f.detach().flatten(1).std(dim=1), f)
    return f + sigma * std * _randn(f.shape, generator, f)


def _quantize(f: torch.Tensor, bits: int, generator, straight_through: bool) -> torch.Tensor:
    flat = f.detach().flatten(1)
    lo, hi = _per_image(flat.min(dim=1).values, f), _per_image(flat.max(dim=1).values, f)
    step = (hi - lo) / (2**bits - 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.where(step > 0, lo + torch.round((f.detach() - lo) / safe) * step, f.detach())
    return f + (q - f).detach() if straight_through else q


def _prune(f: torch.Tensor, fraction: float, generator, straight_through: bool) -> torch.Tensor:
    n, channels = f.shape[0], f.shape[1]
    k = round(fraction * channels)
    device = generator.device if generator is not None else f.device
    order = torch.rand(n, channels, generator=generator, device=device).argsort(dim=1)[:, :k].to(f.device)
    mask = torch.ones(n, channels, device=f.device, dtype=f.dtype).scatter_(1, order, 0.0)
    return f * mask.view(n, channels, *([1] * (f.ndim - 2)))


def _topk(f: torch.Tensor, fraction: float, generator, straight_through: bool) -> torch.Tensor:
    flat = f.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    index = flat.detach().abs().topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, index, 1.0)
    kept = (flat * mask).view_as(f)
    return f + (kept - f).detach() if straight_through else kept


def _channel_support(observed: torch.Tensor) -> tuple[torch.Tensor, None]:
    """The channels a pruning kept: those not all zero in ``observed``."""
    nonzero = observed != 0
    nonzero = nonzero.flatten(2).any(dim=2) if observed.ndim > 2 else nonzero
    return nonzero.view(*nonzero.shape, *([1] * (observed.ndim - nonzero.ndim))).to(observed.dtype), None


def _entry_support(observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries a top-k kept, and the smallest kept magnitude per image (the dropped ones were at most it)."""
    nonzero = observed != 0
    kept = torch.where(nonzero, observed.abs(), torch.full_like(observed, float("inf")))
    return nonzero.to(observed.dtype), _per_image(kept.flatten(1).min(dim=1).values, observed)


@dataclass(frozen=True)
class DefenseFamily:
    """One defense: a transform of the features with one strength (a unit; plugins add more).

    Attributes:
        name: the spec's name (``noise`` in ``noise:0.1``).
        transform: ``(features (N, ...), strength, generator, straight_through) -> features``.
        accept: whether a strength is valid; ``expected`` says which are (in errors), ``example`` gives one.
        random: a draw depends on the generator.
        integer: the strength is an integer (``quantize``'s bits).
        support: for a family whose zeros survive in what it ships (pruning, top-k): ``observed ->
            (mask, threshold or None)``, the support an attacker reads and applies when the family is the
            last step (a threshold: an entry outside it counts by how much its magnitude exceeds it);
            ``None``: the attacker applies the family with fresh randomness.
        train: for a learned family, ``(target, layer, strength, images, labels, config, progress) ->``
            :class:`~diffinv.defense_training.TrainedState` (``config``: a
            :class:`~diffinv.defense_training.DefenseTrainConfig`); ``None``: a fixed transform.
        deploy: for a learned family, ``(target, layer, strength, state) -> (client network, transform or None)``:
            the network whose layer ships the features and the transform ``(features, generator,
            straight_through) -> features`` applied to them.
        baseline: the plain reference a learned defense has to beat on the privacy-utility frontier (noise).
    """

    name: str
    transform: Callable
    accept: Callable[[float], bool]
    expected: str
    example: str
    random: bool
    integer: bool = False
    support: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    train: Callable | None = None
    deploy: Callable | None = None
    baseline: bool = False

    @property
    def learned(self) -> bool:
        """Whether the family trains (:attr:`train`) before it can be applied."""
        return self.train is not None


def _untrained(f, strength, generator, straight_through):
    raise ValueError(
        "a learned defense is applied through its Deployment (`Defense.deployment(target, layer, "
        "state)`, after `Defense.train`), not as a fixed transform."
    )


def _deploy_client(target, layer, strength, state: TrainedState):
    """NoPeek's and the adversarial defense's deployment: the network with the fine-tuned client, no transform."""
    prefix = "client/"
    overrides = {k[len(prefix) :]: v for k, v in state.tensors.items() if k.startswith(prefix)}
    return defended_copy(target, overrides), None


def _deploy_shredder(target, layer, strength, state: TrainedState):
    """Shredder's deployment: the target itself and its learned noise, fresh at every call."""
    try:
        mean, log_scale = state.tensors["noise/mean"], state.tensors["noise/log_scale"]
    except KeyError as err:
        raise ValueError(
            f"shredder state: expected the tensors noise/mean and noise/log_scale, missing {err}."
        ) from None

    def transform(features, generator, straight_through):
        return features + shredder_noise(features, mean, log_scale, generator)

    return target, transform


def _non_negative(v: float) -> bool:
    return 0 <= v < math.inf


_BUILT_IN = (
    DefenseFamily(
        "noise",
        _noise,
        lambda v: 0 <= v < math.inf,
        "a finite number >= 0 (the noise std relative to the features' std)",
        "0.1",
        True,
        baseline=True,
    ),
    DefenseFamily(
        "quantize",
        _quantize,
        lambda v: v.is_integer() and 1 <= v <= 16,
        "an integer number of bits in 1..16",
        "4",
        False,
        integer=True,
    ),
    DefenseFamily(
        "prune",
        _prune,
        lambda v: 0 <= v < 1,
        "a fraction of channels in [0, 1)",
        "0.5",
        True,
        support=_channel_support,
    ),
    DefenseFamily(
        "topk", _topk, lambda v: 0 < v <= 1, "a fraction of entries in (0, 1]", "0.1", False, support=_entry_support
    ),
    DefenseFamily(
        "nopeek",
        _untrained,
        _non_negative,
        "a finite number >= 0 (the weight of the distance correlation)",
        "1",
        False,
        train=train_nopeek,
        deploy=_deploy_client,
    ),
    DefenseFamily(
        "shredder",
        _untrained,
        _non_negative,
        "a finite number >= 0 (the weight of the noise's log scale)",
        "0.1",
        True,
        train=train_shredder,
        deploy=_deploy_shredder,
    ),
    DefenseFamily(
        "adversarial",
        _untrained,
        _non_negative,
        "a finite number >= 0 (the weight of the adversary's reconstruction error)",
        "1",
        False,
        train=train_adversarial,
        deploy=_deploy_client,
    ),
)
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


# ---------------------------------------------------------------------- utility
UtilityUnavailable = SplitUnavailable  # the deployment's name for it: its utility cannot be measured at this layer


@torch.no_grad()
def utility_agreement(
    target: TargetNetwork, images: torch.Tensor, layer: str, clean: torch.Tensor, defended: torch.Tensor
) -> torch.Tensor:
    """Per image, 1.0 where the network run from the ``defended`` features of ``layer`` predicts the
    class it predicts from the images (the deployment still works), else 0.0.

    First checks that the split is real (:meth:`TargetNetwork.check_split
    <diffinv.targets.TargetNetwork.check_split>`): nothing but ``layer``'s output may reach the
    classifier (no skip connection around the layer, no second use of it). The network runs from
    the features by :meth:`TargetNetwork.split_logits <diffinv.targets.TargetNetwork.split_logits>`.

    Args:
        clean: the layer's own features of ``images`` (``target.feature(images, layer)``).

    Raises:
        UtilityUnavailable: the network cannot be run from ``layer`` (the message says why).
    """
    target.check_split(layer, images, clean.to(images.device))
    reference = target.logits(images).float()
    defended_logits = target.split_logits(layer, defended.to(images.device), images)
    return (defended_logits.argmax(dim=1) == reference.argmax(dim=1)).float().cpu()


@torch.no_grad()
def utility_scores(
    deployment: Deployment,
    images: torch.Tensor,
    layer: str,
    reference: TargetNetwork,
    defended: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per image, the deployment's ``agreement`` with the undefended ``reference`` network (1.0 where the defended
    deployment predicts the class the reference predicts from the images) and, with ``labels`` (``-1``: unknown,
    ``NaN``), its top-1 ``accuracy``. The rest of the network runs from the ``defended`` features of ``layer`` with
    the deployment's own network (a fine-tuned client's head is its own), after its split is checked.

    Raises:
        UtilityUnavailable: the network cannot be run from ``layer``.
    """
    client = deployment.target
    client.check_split(layer, images, client.feature(images, layer))
    predicted = client.split_logits(layer, defended.to(images.device), images).float().argmax(dim=1).cpu()
    out = {"agreement": (predicted == reference.logits(images).float().argmax(dim=1).cpu()).float()}
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        out["accuracy"] = torch.where(labels >= 0, (predicted == labels).float(), torch.tensor(math.nan))
    return out
