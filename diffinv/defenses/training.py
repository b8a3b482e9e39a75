"""What the learned defenses share to train: their config, their trained state, the client and the loop.

What a learned family (:mod:`~diffinv.defenses.nopeek`, :mod:`~diffinv.defenses.shredder`,
:mod:`~diffinv.defenses.adversarial`) trained is a :class:`TrainedState`: tensors (the fine-tuned client
parameters, ``client/NAME``, or a noise tensor's parameters, ``noise/...``) and a JSON record of the
training, written as ``state.safetensors`` + ``defense.json``. Nothing is pickled. The server part of the
network stays frozen, batch norm stays in eval mode, and every loop (:class:`TrainingLoop`) shows a
progress bar and stops early when the objective has not improved for ``patience`` steps.

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
from tqdm.auto import tqdm

from ..io import atomic_path, write_json
from ..targets import TargetNetwork

__all__ = [
    "DEFAULT_CONFIG",
    "META_FILE",
    "STATE_FILE",
    "DefenseTrainConfig",
    "TrainedState",
    "TrainingLoop",
    "checked_labels",
    "client_parameter_names",
    "defended_copy",
    "deploy_client",
    "forward",
    "trainable_client",
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


DEFAULT_CONFIG = DefenseTrainConfig()  # the training of a learned family called without a config


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


# ---------------------------------------------------------------------- the client
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


def deploy_client(target, layer, strength, state: TrainedState):
    """The deployment of a family that fine-tunes the client (NoPeek, adversarial): the network with the
    fine-tuned client parameters (``client/NAME``), no transform."""
    prefix = "client/"
    overrides = {k[len(prefix) :]: v for k, v in state.tensors.items() if k.startswith(prefix)}
    return defended_copy(target, overrides), None


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
            out = forward(target, layer, probe)[0]
            grads = torch.autograd.grad(out.float().sum(), list(params.values()), allow_unused=True)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return [n for n, g in zip(params, grads) if g is not None]


def trainable_client(target: TargetNetwork, layer: str, images: torch.Tensor):
    """A trainable copy of ``target`` and its client parameters (name -> parameter, requiring grad)."""
    copy = defended_copy(target)
    names = client_parameter_names(copy, layer, tuple(images.shape[-2:]))
    params = dict(copy.model.named_parameters())
    client = {n: params[n].requires_grad_(True) for n in names}
    return copy, client


def forward(
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


# ---------------------------------------------------------------------- the loop
def checked_labels(target: TargetNetwork, layer: str, images: torch.Tensor, labels) -> torch.Tensor:
    """The true ``labels`` of the training ``images`` as a long tensor, after checking what a training needs.

    Raises:
        ValueError: no classifier head, too few images, missing or unknown labels, or no such ``layer``.
    """
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


class TrainingLoop:
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
