"""diffinv: reconstruct images from the features of deep networks, with a diffusion prior.

``from diffinv import DiffInvPipeline`` works too: the pipeline is imported only when it is first
asked for (diffusers' model classes come with :class:`TargetNetwork`, a diffusers ``ModelMixin``).
"""

__version__ = "0.2.0"

from .features import FeatureSet  # noqa: E402
from .targets import TargetNetwork, WeightsNotFoundError  # noqa: E402

__all__ = ["DiffInvPipeline", "FeatureSet", "TargetNetwork", "WeightsNotFoundError", "__version__"]


def __getattr__(name: str):
    if name == "DiffInvPipeline":
        from .pipelines import DiffInvPipeline

        return DiffInvPipeline
    raise AttributeError(f"module 'diffinv' has no attribute {name!r}")
