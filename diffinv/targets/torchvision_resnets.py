"""The target-loader unit of torchvision's ResNets (pretrained weights from the torch hub cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import WeightsNotFoundError
from .loader import TargetLoader
from .weights import load_state_dict_into

__all__ = ["TorchvisionResNets"]


class TorchvisionResNets(TargetLoader):
    """torchvision's ResNet-50 and ResNet-101; pretrained weights from the torch hub cache."""

    kind = "torchvision"
    names = ("resnet50", "resnet101")
    default_layers = dict.fromkeys(names, ("layer1", "layer2", "layer3", "layer4"))
    atlas_layers = dict.fromkeys(names, ("maxpool", "layer1", "layer2", "layer3", "layer4"))
    installed_order = 20

    @staticmethod
    def cached_weights(name: str) -> Path | None:
        """The newest of torchvision's ImageNet checkpoints of ``name`` in the torch hub cache, or ``None``."""
        found = [p for p in TorchvisionResNets._candidates(name) if p.is_file()]
        return found[-1] if found else None

    @staticmethod
    def _candidates(name: str) -> list[Path]:
        import torchvision

        return [
            Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
            for w in torchvision.models.get_model_weights(name)
        ]

    def installed(self) -> list[str]:
        return [name for name in self.names if self.cached_weights(name)]

    def load(self, name, weights):
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if weights is None:
            return model
        if weights == "default":
            weights = self.cached_weights(name)
            if weights is None:
                raise WeightsNotFoundError(
                    f"Pretrained ImageNet weights for {name!r} were not found offline. Looked for "
                    f"{', '.join(str(p) for p in self._candidates(name))}. Copy a torchvision checkpoint there "
                    f"(e.g. from a machine with internet: `torchvision.models.{name}(weights='DEFAULT')`), "
                    f"pass `weights=PATH` to a state-dict file, or `weights=None` for random weights."
                )
        load_state_dict_into(model, weights, name)
        return model
