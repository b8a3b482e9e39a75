"""Target networks: a frozen image network plus the layers whose features we invert.

A :class:`TargetNetwork` owns its preprocessing (resize and normalization), so callers
always pass images as float tensors in ``[0, 1]``, NCHW, and gradients flow from the
features back to those pixels. Each kind of network is built by a target-loader unit
(:class:`TargetLoader`, one module each); plugins add theirs through entry points.

Example:
    >>> target = TargetNetwork.from_name("tf_efficientnet_lite0", layers="blocks.2")
    >>> feats = target.feature(images)            # images: (N, 3, H, W) in [0, 1]
    >>> target.feature_shape("blocks.2", (224, 224))
    (40, 28, 28)
"""

# A saved pipeline names its target ["diffinv.targets", "TargetNetwork"]; diffusers' loader looks up the component's
# base class (``ModelMixin``, whose ``from_pretrained`` loads it) in that same module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from .architecture import Architecture, architecture, module_bytes
from .efficientnet_lite import EfficientNetLitePackages
from .errors import SplitUnavailable, WeightsMismatchError, WeightsNotFoundError
from .loader import TargetLoader
from .network import TargetNetwork, imagenet_categories
from .registry import (
    ATLAS_LAYERS,
    BUILTIN_LOADERS,
    DEFAULT_LAYERS,
    available_targets,
    installed_targets,
    target_loader,
    target_loaders,
)
from .timm_models import TimmModels
from .torchvision_resnets import TorchvisionResNets
from .weights import load_state_dict_into

__all__ = [
    "ATLAS_LAYERS",
    "BUILTIN_LOADERS",
    "DEFAULT_LAYERS",
    "EfficientNetLitePackages",
    "TargetLoader",
    "TimmModels",
    "TorchvisionResNets",
    "Architecture",
    "SplitUnavailable",
    "TargetNetwork",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "architecture",
    "available_targets",
    "imagenet_categories",
    "installed_targets",
    "load_state_dict_into",
    "module_bytes",
    "target_loader",
    "target_loaders",
]
