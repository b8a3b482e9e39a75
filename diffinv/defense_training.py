"""Training the learned defenses of a split point (NoPeek, Shredder, adversarial learning).

A learned defense (:mod:`diffinv.defenses`: ``nopeek:ALPHA``, ``shredder:LAMBDA``, ``adversarial:LAMBDA``)
is trained on labelled images; what it learned is a :class:`TrainedState`: tensors (the fine-tuned
client parameters, ``client/NAME``, or a noise tensor's parameters, ``noise/...``) and a JSON record of the
training (its settings, its history, its privacy objective before and after), written as
``state.safetensors`` + ``defense.json``. Nothing is pickled.

* **NoPeek** (Vepakomma et al. 2020): the client layers (the parameters the split's features depend on,
  :func:`client_parameter_names`) are fine-tuned with the task loss plus ``ALPHA`` x the distance
  correlation between the input images and the split features (:func:`distance_correlation`).
* **Shredder** (Mireshghallah et al. 2020): a learned additive noise at the split, ``(mu + sigma * eps) x``
  the std of each image's features, ``eps`` standard normal and fresh at every call; ``mu`` and
  ``log sigma`` (one per feature entry) are trained with the task loss minus ``LAMBDA`` x the mean
  ``log sigma`` (the noise as large as possible while the task loss stays low); the client is frozen.
* **Adversarial learning** (DeepObfuscator, Li et al. 2019): min-max, alternating: a small decoder adversary
  learns to reconstruct the image from the features (pixel MSE); the client is fine-tuned with the task
  loss minus ``LAMBDA`` x the adversary's reconstruction error.

The server part of the network (from the split to the logits) stays frozen: the deployment's head is the
network's own. Batch norm stays in eval mode (its statistics frozen). The loop is short and stops early
when the objective has not improved for ``patience`` steps (:class:`DefenseTrainConfig`); every loop shows a
progress bar.

Example:
    >>> state = train_nopeek(target, "blocks.2", 1.0, images, labels, DefenseTrainConfig(steps=50))
    >>> state.save("defenses/nopeek-1/blocks.2"); TrainedState.load("defenses/nopeek-1/blocks.2").meta["steps"]
    50
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .io import atomic_path, write_json
from .targets import TargetNetwork

__all__ = [
    "DefenseTrainConfig",
    "TrainedState",
    "client_parameter_names",
    "defended_copy",
    "distance_correlation",
    "fresh_adversary_error",
    "shredder_noise",
    "train_adversarial",
    "train_nopeek",
    "train_shredder",
]

STATE_FILE, META_FILE = "state.safetensors", "defense.json"


@dataclass(frozen=True)
class DefenseTrainConfig:
    """How a learned defense trains (every field is a setting of the run that records it).

    Attributes:
        steps: at most this many optimizer steps.
        batch_size: images per step (drawn without replacement, reshuffled every epoch).
        learning_rate: Adam's rate for the client's parameters.
        noise_learning_rate: Adam's rate for Shredder's noise parameters.
        adversary_learning_rate: Adam's rate for the adversarial defense's decoder adversary.
        patience: stop when the objective's running mean has not improved for this many steps (0: never).
        seed: the seed of the batches and of the adversary's initialization.
        adversary_channels: width of the adversarial defense's decoder adversary.
    """

    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    noise_learning_rate: float = 0.02
    adversary_learning_rate: float = 1e-3
    patience: int = 25
    seed: int = 0
    adversary_channels: int = 32

    def __post_init__(self):
        for name in ("steps", "batch_size", "adversary_channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"`patience` must be an integer >= 0 (0: no early stopping), got {self.patience!r}.")
        for name in ("learning_rate", "noise_learning_rate", "adversary_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")

    def settings(self) -> dict:
        """The fields, for a manifest."""
        return asdict(self)


@dataclass
class TrainedState:
    """What a learned defense trained: ``tensors`` (name -> tensor) and ``meta`` (JSON: settings, history)."""

    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def save(self, folder) -> Path:
        """Writes ``state.safetensors`` then ``defense.json`` (the marker of a finished training) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / STATE_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(tmp))
        write_json(folder / META_FILE, self.meta)
        return folder

    @classmethod
    def load(cls, folder) -> TrainedState:
        """Reads a state written by :meth:`save` (safetensors and JSON only).

        Raises:
            FileNotFoundError: ``folder`` holds no finished training.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META_FILE).is_file() or not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} holds no trained defense (expected {STATE_FILE} and "
                f"{META_FILE}); train it first (diffinv audit trains the learned defenses it "
                f"is given)."
            )
        return cls(load_file(str(folder / STATE_FILE)), json.loads((folder / META_FILE).read_text()))

    @staticmethod
    def exists(folder) -> bool:
        """Whether ``folder`` holds a finished training."""
        return (Path(folder) / META_FILE).is_file() and (Path(folder) / STATE_FILE).is_file()


# ---------------------------------------------------------------------- pieces
def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sample distance correlation (Székely et al. 2007) of ``x`` and ``y``, ``(N, ...)`` each, in [0, 1].

    Differentiable; 0 when the two are independent (in the limit of many samples), 1 when one is a
    similarity transform of the other.

    Raises:
        ValueError: fewer than 2 samples, or ``x`` and ``y`` with different numbers of samples.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"`x` and `y` must hold the same number (>= 2) of samples, got {len(x)} and {len(y)}.")

    def centered(t):
        d = torch.cdist(t.flatten(1).float(), t.flatten(1).float())
        return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()

    a, b = centered(x), centered(y)
    dcov = (a * b).mean().clamp_min(0)
    denominator = ((a * a).mean() * (b * b).mean()).sqrt().clamp_min(1e-12)
    return (dcov / denominator).sqrt()


def defended_copy(target: TargetNetwork, overrides: Mapping[str, torch.Tensor] | None = None) -> TargetNetwork:
    """A copy of ``target`` (a new :class:`TargetNetwork` around a copy of its network) with the parameters
    ``overrides`` (``name -> tensor``, names as in ``target.model.named_parameters()``) loaded; ``target`` is
    not changed.

    Raises:
        ValueError: an override names no parameter of the network, or has another shape.
    """
    import copy

    model = copy.deepcopy(target.model)
    params = dict(model.named_parameters())
    for name, value in (overrides or {}).items():
        if name not in params or params[name].shape != value.shape:
            shape = tuple(params[name].shape) if name in params else None
            raise ValueError(
                f"defense state: parameter {name!r} of shape {tuple(value.shape)} does not fit "
                f"{target.name!r} (its shape there: {shape}); expected a state trained on this network."
            )
        with torch.no_grad():
            params[name].copy_(value.to(params[name]))
    return TargetNetwork(
        model,
        target.layers,
        name=target.name,
        mean=target.mean.flatten().tolist(),
        std=target.std.flatten().tolist(),
        input_size=target.input_size,
        has_classifier=target.has_classifier,
        categories=target.categories,
        weights="custom",
    )


def client_parameter_names(target: TargetNetwork, layer: str, image_size: tuple[int, int]) -> list[str]:
    """The parameters that ``layer``'s features depend on (the client's, input to the split), found by autograd
    on a probe image."""
    params = dict(target.model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        device = target.mean.device
        with torch.enable_grad():
            probe = torch.rand(1, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)
            out = _forward(target, layer, probe)[0]
            grads = torch.autograd.grad(out.float().sum(), list(params.values()), allow_unused=True)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return [n for n, g in zip(params, grads) if g is not None]


def _forward(
    target: TargetNetwork, layer: str, images: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(features of layer, logits)`` of one differentiable forward of the whole network; ``edit`` replaces the
    layer's output by ``edit(output)`` for the rest of the network (logits ``None`` without a classifier head)."""
    module = dict(target.model.named_modules())[layer]
    seen = []

    def hook(_module, _inputs, output):
        out = edit(output) if edit is not None else output
        seen.append(out)
        return out

    handle = module.register_forward_hook(hook)
    try:
        logits = target.model(target.preprocess(images))
    finally:
        handle.remove()
    return seen[0], (logits if target.has_classifier else None)


def shredder_noise(
    features: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shredder's additive noise for ``features`` ``(N, ...)``: ``(mean + exp(log_scale) * eps) x`` each image's
    feature std, ``eps`` standard normal drawn from ``generator`` (fresh at every call)."""
    device = generator.device if generator is not None else features.device
    eps = torch.randn(features.shape, generator=generator, device=device).to(features)
    std = features.detach().flatten(1).std(dim=1).view(-1, *([1] * (features.ndim - 1)))
    return (mean.to(features) + log_scale.to(features).exp() * eps) * std


class _Adversary(nn.Module):
    """The adversarial defense's decoder adversary: features -> image (two convolutions, bilinear upsampling)."""

    def __init__(self, channels: int, width: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1)
        )

    def forward(self, features):
        x = F.interpolate(self.inp(features.float()), size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))


def _checked(target: TargetNetwork, layer: str, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if not target.has_classifier:
        raise ValueError(
            f"a learned defense trains with the task loss; target {target.name!r} has no classifier head."
        )
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(
            f"`images` must be (N >= 2, 3, H, W) training images in [0, 1], got shape {tuple(images.shape)}."
        )
    if labels is None or len(labels) != len(images) or bool((torch.as_tensor(labels) < 0).any()):
        raise ValueError(
            f"a learned defense trains on true labels: `labels` must give a class >= 0 for each of the "
            f"{len(images)} training images, got {None if labels is None else len(labels)} "
            f"(pass --labels)."
        )
    if layer not in dict(target.model.named_modules()):
        raise ValueError(f"`layer` {layer!r} is not a module of {target.name!r}.")
    return torch.as_tensor(labels, dtype=torch.long)


class _Loop:
    """The shared loop: batches, the progress bar, early stopping on the objective's running mean, the history."""

    def __init__(self, name: str, layer: str, images, labels, config: DefenseTrainConfig, progress: bool, device):
        self.images, self.labels, self.config, self.device = images, labels, config, device
        self.generator = torch.Generator().manual_seed(config.seed)
        self.order: list[int] = []
        self.history: list[dict] = []
        self.best, self.since = math.inf, 0
        self.tic = time.perf_counter()
        self.bar = tqdm(total=config.steps, desc=f"train defense {name} {layer}", disable=not progress)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = min(self.config.batch_size, len(self.images))
        if len(self.order) < size:
            self.order = torch.randperm(len(self.images), generator=self.generator).tolist()
        index, self.order = self.order[:size], self.order[size:]
        return self.images[index].to(self.device), self.labels[index].to(self.device)

    def log(self, step: int, **values: float) -> bool:
        """Records a step; whether to stop (early: no improvement of the running mean for ``patience`` steps)."""
        self.history.append({"step": step, **{k: float(v) for k, v in values.items()}})
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
        window = [h["objective"] for h in self.history[-5:]]
        running = sum(window) / len(window)
        if running < self.best - 1e-4:
            self.best, self.since = running, 0
        else:
            self.since += 1
        return bool(self.config.patience) and self.since >= self.config.patience

    def meta(self, name: str, strength: float, layer: str, **more) -> dict:
        self.bar.close()
        return {
            "defense": name,
            "strength": strength,
            "layer": layer,
            "config": self.config.settings(),
            "steps": len(self.history),
            "seconds": time.perf_counter() - self.tic,
            "history": self.history,
            **more,
        }


def _client(target: TargetNetwork, layer: str, images: torch.Tensor):
    """A trainable copy of ``target`` and its client parameters (name -> parameter, requiring grad)."""
    copy = defended_copy(target)
    names = client_parameter_names(copy, layer, tuple(images.shape[-2:]))
    params = dict(copy.model.named_parameters())
    client = {n: params[n].requires_grad_(True) for n in names}
    return copy, client


@torch.no_grad()
def _probe_dcor(target: TargetNetwork, layer: str, images: torch.Tensor) -> float:
    return float(distance_correlation(images, target.feature(images, layer)))


def train_nopeek(
    target: TargetNetwork,
    layer: str,
    alpha: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DefenseTrainConfig(),
    progress: bool = True,
) -> TrainedState:
    """NoPeek: fine-tunes the client layers with ``task loss + alpha x dCor(images, features)``.

    Args:
        target: the network (not changed; a copy is fine-tuned).
        layer: the split point.
        alpha: the weight of the distance correlation.
        images: ``(N, 3, H, W)`` training images in [0, 1]; labels: their true classes.

    Returns:
        the fine-tuned client parameters (``client/NAME``); ``meta["privacy_before"/"privacy_after"]``: the
        distance correlation on the first batch of images before and after.
    """
    labels = _checked(target, layer, images, labels)
    device = target.mean.device
    copy, client = _client(target, layer, images)
    probe = images[: config.batch_size].to(device)
    before = _probe_dcor(copy, layer, probe)
    optimizer = torch.optim.Adam(client.values(), lr=config.learning_rate)
    loop = _Loop("nopeek", layer, images, labels, config, progress, device)
    for step in range(config.steps):
        x, y = loop.batch()
        feats, logits = _forward(copy, layer, x)
        task, dcor = F.cross_entropy(logits.float(), y), distance_correlation(x, feats)
        objective = task + alpha * dcor
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=dcor.item()):
            break
    after = _probe_dcor(copy, layer, probe)
    return TrainedState(
        {f"client/{n}": p.detach().cpu() for n, p in client.items()},
        loop.meta("nopeek", alpha, layer, privacy="distance correlation", privacy_before=before, privacy_after=after),
    )


def train_shredder(
    target: TargetNetwork,
    layer: str,
    lam: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DefenseTrainConfig(),
    progress: bool = True,
) -> TrainedState:
    """Shredder: a learned additive noise at the split (:func:`shredder_noise`), trained with ``task loss - lam x
    mean log sigma``; the client is frozen. ``meta["privacy_before"/"privacy_after"]``: the noise's size, the rms of
    ``mu + sigma * eps`` relative to the features' std."""
    labels = _checked(target, layer, images, labels)
    device = target.mean.device
    with torch.no_grad():
        shape = target.feature(images[:1].to(device), layer).shape[1:]
    mean = torch.zeros(shape, device=device, requires_grad=True)
    log_scale = torch.full(shape, math.log(0.1), device=device, requires_grad=True)
    size = lambda: float((mean.detach() ** 2 + log_scale.detach().exp() ** 2).mean().sqrt())  # noqa: E731
    before = size()
    optimizer = torch.optim.Adam([mean, log_scale], lr=config.noise_learning_rate)
    loop = _Loop("shredder", layer, images, labels, config, progress, device)
    noise_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    for step in range(config.steps):
        x, y = loop.batch()
        _, logits = _forward(target, layer, x, edit=lambda f: f + shredder_noise(f, mean, log_scale, noise_generator))
        task = F.cross_entropy(logits.float(), y)
        objective = task - lam * log_scale.mean()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(max=math.log(100.0))
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=size()):
            break
    return TrainedState(
        {"noise/mean": mean.detach().cpu(), "noise/log_scale": log_scale.detach().cpu()},
        loop.meta(
            "shredder",
            lam,
            layer,
            privacy="noise size (rms, relative to the features' std)",
            privacy_before=before,
            privacy_after=size(),
        ),
    )


def fresh_adversary_error(
    target: TargetNetwork, layer: str, images: torch.Tensor, config: DefenseTrainConfig, steps: int = 60
) -> float:
    """The reconstruction MSE that a *fresh* decoder adversary (:class:`_Adversary`, seeded by ``config.seed``)
    reaches after ``steps`` full-batch steps on ``target``'s features of ``images`` (computed once): the privacy
    measure of the adversarial defense, the same for the original and the fine-tuned client."""
    device = target.mean.device
    images = images.to(device)
    with torch.no_grad():
        feats = target.feature(images, layer).float()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed + 7)
    adversary = _Adversary(feats.shape[1], config.adversary_channels, tuple(images.shape[-2:])).to(device)
    torch.random.set_rng_state(generator_state)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=config.adversary_learning_rate)
    for _ in range(steps):
        loss = F.mse_loss(adversary(feats), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(F.mse_loss(adversary(feats), images))


def train_adversarial(
    target: TargetNetwork,
    layer: str,
    lam: float,
    images: torch.Tensor,
    labels,
    config: DefenseTrainConfig = DefenseTrainConfig(),
    progress: bool = True,
) -> TrainedState:
    """Adversarial learning (DeepObfuscator): alternating, an adversary step (a small decoder learns to reconstruct
    the images from the features, pixel MSE) then a client step (``task loss - lam x`` the adversary's MSE).
    ``meta["privacy_before"/"privacy_after"]``: the reconstruction MSE of a fresh adversary trained on the original
    and on the fine-tuned client's features (:func:`fresh_adversary_error`; history ``privacy``: the alternating
    adversary's MSE per step)."""
    labels = _checked(target, layer, images, labels)
    device = target.mean.device
    probe = images[: config.batch_size]
    before = fresh_adversary_error(target, layer, probe, config)
    copy, client = _client(target, layer, images)
    with torch.no_grad():
        channels = copy.feature(images[:1].to(device), layer).shape[1]
    torch.manual_seed(config.seed)
    adversary = _Adversary(channels, config.adversary_channels, tuple(images.shape[-2:])).to(device)
    optimizer = torch.optim.Adam(client.values(), lr=config.learning_rate)
    adversary_optimizer = torch.optim.Adam(adversary.parameters(), lr=config.adversary_learning_rate)
    loop = _Loop("adversarial", layer, images, labels, config, progress, device)
    for step in range(config.steps):
        x, y = loop.batch()
        # 1. the adversary learns to reconstruct from the client's current features
        with torch.no_grad():
            feats = copy.feature(x, layer)
        reconstruction = F.mse_loss(adversary(feats), x)
        adversary_optimizer.zero_grad(set_to_none=True)
        reconstruction.backward()
        adversary_optimizer.step()
        # 2. the client keeps the task and makes the adversary's reconstruction worse
        feats, logits = _forward(copy, layer, x)
        task, leak = F.cross_entropy(logits.float(), y), F.mse_loss(adversary(feats), x)
        objective = task - lam * leak
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if loop.log(step, objective=objective.item(), task=task.item(), privacy=reconstruction.item()):
            break
    meta = loop.meta(
        "adversarial",
        lam,
        layer,
        privacy="reconstruction MSE of a fresh adversary (on the first batch)",
        privacy_before=before,
        privacy_after=fresh_adversary_error(copy, layer, probe, config),
    )
    return TrainedState({f"client/{n}": p.detach().cpu() for n, p in client.items()}, meta)
