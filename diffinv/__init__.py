"""diffinv: reconstruct images from the features of deep networks, with a diffusion prior."""

from .features import FeatureSet
from .targets import TargetNetwork, WeightsNotFoundError

__version__ = "0.1.0"

__all__ = ["FeatureSet", "TargetNetwork", "WeightsNotFoundError", "__version__"]
