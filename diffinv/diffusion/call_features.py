"""The features of one call of :class:`~diffinv.pipelines.DiffInvPipeline`, resolved once: the target network, the
input size it resizes to, the size of the generated images, the layer (:func:`resolve_call_features`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffinv.features import FeatureSet, resolve_features
from diffinv.targets import TargetNetwork

__all__ = ["CallFeatures", "nearest_multiple_of_8", "resolve_call_features", "target_dtype"]


def nearest_multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` rounded per side to the nearest multiple of 8 (at least 8): the size a Stable
    Diffusion model generates for a requested image size that it cannot make itself.

    The one rounding of diffinv: the pipeline's default output size for a FeatureSet made at another
    size, and the generated size of :class:`~diffinv.inverters.diffusion.DiffusionInverter`.

    Example:
        >>> nearest_multiple_of_8((30, 100)), nearest_multiple_of_8((3, 64))
        ((32, 96), (8, 64))
    """
    return tuple(max(8, 8 * round(v / 8)) for v in size)


def target_dtype(target: TargetNetwork) -> torch.dtype:
    """The target keeps its own dtype (fp32 unless cast): images are cast to it."""
    return next(target.parameters(), torch.empty(0)).dtype


@dataclass(frozen=True)
class CallFeatures:
    """The features of one call, resolved once (:func:`resolve_call_features`).

    Attributes:
        features: ``(N, ...)`` the checked feature tensor, fp32, on the target's device.
        target: the network they come from.
        layer: their layer.
        input_size: the ``(H, W)`` the target resizes to in this call (``None``: its own).
        image_size: ``(H, W)`` of the images the pipeline generates, multiples of 8.
    """

    features: torch.Tensor
    target: TargetNetwork
    layer: str
    input_size: tuple[int, int] | None
    image_size: tuple[int, int]


def resolve_call_features(
    pipe,
    features: torch.Tensor | FeatureSet,
    height: int | None,
    width: int | None,
    input_size: tuple[int, int] | None,
    layer: str | None,
    target: TargetNetwork | None = None,
) -> CallFeatures:
    """Resolves the features of one call of ``pipe`` once: the target, the size it resizes to, the output size.

    The target is the call's ``target`` (it keeps its own input size), else the pipeline's, else (a
    pipeline without one) the FeatureSet's own, rebuilt for this call and not kept. A target that follows
    the features (``target_follows_features``: given by name) resizes to the input size the features were
    made at, passed to each feature call
    (:meth:`TargetNetwork.feature <diffinv.targets.TargetNetwork.feature>`'s ``input_size``), so
    the target itself never changes and calls can share the pipeline. The features are checked
    with one probe forward pass (:func:`~diffinv.features.resolve_features`).
    """
    if target is not None:
        built = False
    elif pipe.target is not None:
        target, built = pipe.target, pipe.config.target_follows_features
    else:
        target, built = features.to_target().to(pipe.device), False
    size = _features_input_size(pipe, target, built, features, height, width, input_size)
    height, width = _image_size(pipe, features, height, width, size or target.input_size)
    if not isinstance(features, FeatureSet):  # a FeatureSet carries its layer (an explicit `layer` must be it)
        default = pipe.layer if target is pipe.target else (target.layers[0] if len(target.layers) == 1 else None)
        if layer is None and default is None:
            raise ValueError(f"`layer` is required: the target {target.name!r} has several layers {target.layers}.")
        layer = layer or default
    feats, layer, _ = resolve_features(target, features, (height, width), layer, input_size=size)
    return CallFeatures(feats.to(target.mean.device, torch.float32), target, layer, size, (height, width))


def _features_input_size(
    pipe,
    target: TargetNetwork,
    built: bool,
    features,
    height: int | None,
    width: int | None,
    input_size: tuple[int, int] | None,
) -> tuple[int, int] | None:
    """The input size the target resizes to in this call; ``None`` keeps the target's own.

    Only a target that follows the features (``target_follows_features``: given by name) adapts: to a FeatureSet's
    recorded resize (else its input size: the images were fed as they were), or for a tensor to
    ``input_size``, else ``(height, width)`` when either is given.
    """
    if not built:
        if input_size is not None and tuple(input_size) != target.input_size:
            raise ValueError(
                f"`input_size` is {tuple(input_size)} but the target {target.name!r} was passed in as a "
                f"TargetNetwork with input size {target.input_size}, which it keeps: build it with "
                f"`input_size={tuple(input_size)}`, or give the target by name."
            )
        return None
    if isinstance(features, FeatureSet):
        recorded = features.preprocessing.get("input_size")
        return tuple(int(v) for v in recorded) if recorded else tuple(features.input_size)
    if input_size is not None:
        return tuple(int(v) for v in input_size)
    if height is not None or width is not None:
        return _image_size(pipe, features, height, width, target.input_size)
    return None


def _image_size(
    pipe, features, height: int | None, width: int | None, target_input_size: tuple[int, int] | None
) -> tuple[int, int]:
    """Output size from the arguments, the FeatureSet or the UNet; multiples of 8.

    A FeatureSet's size that is not a multiple of 8 is rounded to the nearest one when the
    target resizes its input (``target_input_size`` is not ``None``) anyway.
    """
    if height is None and width is None and isinstance(features, FeatureSet):
        height, width = features.input_size
        if (height % 8 or width % 8) and target_input_size is not None:
            # the target resizes its input anyway: any size near the original gives the same features
            height, width = nearest_multiple_of_8((height, width))
    else:
        sample_size = pipe.unet.config.sample_size
        sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
        height = height or sample_size * pipe.vae_scale_factor
        width = width or sample_size * pipe.vae_scale_factor
    if height % 8 or width % 8:
        raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
    return int(height), int(width)
