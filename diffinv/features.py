"""FeatureSet: the features of one layer for a batch of images, plus what produced them.

Saved as safetensors: the tensor under ``"features"`` and the metadata as strings, so a
feature file is self-describing (target, its weights and their fingerprint, layer, input
size, preprocessing, dtype, source files) and can be checked against its target when loaded:
features made by other weights than the target's are refused, naming the weights that made them.

Example:
    >>> fs = FeatureSet.extract(target, images, layer="blocks.2", sources=["cat.png"])
    >>> fs.save("feats.safetensors")
    >>> fs = FeatureSet.load("feats.safetensors", target=target)
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io.files import atomic_path, check_regular_file, cut_short
from .targets import TargetNetwork

__all__ = ["FeatureSet", "check_features", "check_images", "check_input_size", "check_sources", "resolve_features"]

FORMAT_VERSION = "1"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The longest source: a path (PATH_MAX), or a label.
MAX_SOURCE_LENGTH = 4096


def check_input_size(input_size, name: str = "input_size") -> tuple[int, int]:
    """``(H, W)`` of positive integers (a list or tuple of two; an int ``n`` means ``(n, n)``)."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, (tuple, list))
        or len(input_size) != 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) or getattr(v, "is_integer", lambda: False)()
            for v in input_size
        )
    ):
        raise ValueError(f"`{name}` must be (height, width), two positive integers, got {input_size!r}.")
    size = tuple(int(v) for v in input_size)
    if min(size) < 1:
        raise ValueError(f"`{name}` must be (height, width), two positive integers, got {input_size!r}.")
    return size


def check_images(images, name: str = "images") -> torch.Tensor:
    """A ``(N, 3, H, W)`` float32 batch in [0, 1] from float (any precision) or uint8 images; else a ValueError."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor (N, 3, H, W) in [0, 1], got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`{name}` must be a (N, 3, H, W) tensor in [0, 1], got shape {tuple(images.shape)}.")
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty batch (N = 0); give at least one image.")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"`{name}` has dtype {images.dtype}; expected float images in [0, 1] or uint8 in 0..255.")
    images = images.float()
    if not torch.isfinite(images).all() or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(
            f"`{name}` must hold finite values in [0, 1], got min {images.min().item():.4g} and max "
            f"{images.max().item():.4g}; divide uint8-range floats by 255."
        )
    return images.clamp(0, 1)


def check_features(
    features: torch.Tensor, expected_shape: Sequence[int] | None = None, name: str = "features"
) -> None:
    """Raises a clear ``ValueError`` for non-finite features or a shape not matching the layer.

    Args:
        features: ``(N, *shape)`` tensor.
        expected_shape: the layer's feature shape without the batch dimension.
        name: the argument name used in messages.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or a FeatureSet, got {type(features).__name__}.")
    if features.ndim < 2:
        raise ValueError(
            f"`{name}` must be a batch of N feature maps (N, C, H, W), tokens (N, T, D) or vectors "
            f"(N, D), got shape {tuple(features.shape)}; give one item as `{name}[None]`."
        )
    if features.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"`{name}` has dtype {str(features.dtype).replace('torch.', '')}; expected floating-point "
            f"features: float16, bfloat16, float32 or float64."
        )
    if expected_shape is not None and tuple(features.shape[1:]) != tuple(expected_shape):
        raise ValueError(
            f"`{name}` has shape {tuple(features.shape)} but the target layer produces "
            f"(N, {', '.join(map(str, expected_shape))}) for this input size. Check the layer name, "
            f"the target and the image size the features were extracted at."
        )
    if not torch.isfinite(features).all():
        bad = (~torch.isfinite(features)).sum().item()
        raise ValueError(f"`{name}` contains {bad} non-finite values (NaN or inf); features must be finite.")


def check_sources(sources, count: int, name: str = "sources") -> list[str]:
    """``sources`` as a list of ``count`` strings (file names or labels, one per item); ``[]`` stays ``[]``.

    Raises:
        ValueError: not a list (or tuple) of strings, not one per item, or an entry with a NUL character or
            longer than :data:`MAX_SOURCE_LENGTH` (it could never name an output file); the value shown is cut short.
    """
    if not isinstance(sources, (list, tuple)):
        raise ValueError(
            f"`{name}` must be a list of strings, one per item, got a {type(sources).__name__}: "
            f"{cut_short(repr(sources))}."
        )
    for i, source in enumerate(sources):
        if not isinstance(source, str):
            raise ValueError(
                f"`{name}[{i}]` must be a string (a file name or label), got a {type(source).__name__}: "
                f"{cut_short(repr(source))}."
            )
        if "\0" in source or len(source) > MAX_SOURCE_LENGTH:
            what = "holds a NUL character" if "\0" in source else f"is {len(source)} characters long"
            raise ValueError(
                f"`{name}[{i}]` {cut_short(repr(source))} {what}; expected a file name or label of at most "
                f"{MAX_SOURCE_LENGTH} characters, without NUL."
            )
    if sources and len(sources) != count:
        raise ValueError(f"`{name}` has {len(sources)} entries but `features` has {count} items; give one per item.")
    return list(sources)


@dataclass
class FeatureSet:
    """Features of one layer for N images.

    Attributes:
        features: ``(N, ...)`` tensor.
        target: name of the target network (``TargetNetwork.name``).
        layer: the layer the features come from.
        input_size: ``(H, W)`` of the images given to the target (before its own resize).
        preprocessing: the target's resize/normalization, for the record.
        sources: one entry per image (file names or labels).
        weights: the target's weights source (``TargetNetwork.weights``: ``"default"``,
            ``"random:SEED"``, a file's path, ...); ``None`` when unknown.
        weights_fingerprint: :meth:`TargetNetwork.weights_fingerprint` of the weights that made
            the features; ``None`` when unknown (then only the target's name is checked).
        defense: the defense applied to the features after the layer (``diffinv.defenses`` spec,
            e.g. ``"noise:0.1"``); ``None``: the layer's own output (files without it load as ``None``).
    """

    features: torch.Tensor
    target: str
    layer: str
    input_size: tuple[int, int]
    preprocessing: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    weights: str | None = None
    weights_fingerprint: str | None = None
    defense: str | None = None

    def __post_init__(self):
        self.input_size = check_input_size(self.input_size)
        check_features(self.features)
        self.sources = check_sources(self.sources, len(self.features))
        if len(self.features) == 0:
            raise ValueError(
                "`features` holds no feature maps (its batch dimension is 0); a FeatureSet needs at least one."
            )

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    # ------------------------------------------------------------------ building
    @classmethod
    @torch.no_grad()
    def extract(
        cls,
        target: TargetNetwork,
        images: torch.Tensor,
        layer: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> FeatureSet:
        """Runs ``target`` on ``images`` ([0, 1], NCHW) and keeps ``layer``'s features.

        ``images`` may be float (any precision, in [0, 1]) or uint8 (0..255, scaled by 1/255).

        Raises:
            ValueError: an empty batch, another integer dtype, or float values outside [0, 1].
        """
        images = check_images(images)
        layer = layer or target.layer
        feats = target.feature(images.to(target.mean.device), layer).float().cpu().contiguous()
        return cls(
            features=feats,
            target=target.name,
            layer=layer,
            input_size=tuple(images.shape[-2:]),
            preprocessing=_preprocessing(target),
            sources=list(sources) if sources is not None else [f"image_{i}" for i in range(len(images))],
            weights=target.weights,
            weights_fingerprint=target.weights_fingerprint(),
        )

    def check_provenance(self, target: TargetNetwork) -> None:
        """Raises ``ValueError`` unless ``target`` is the network, with the weights, that made these features."""
        if target.name != self.target:
            raise ValueError(f"features were extracted with target {self.target!r} but `target` is {target.name!r}.")
        if self.weights_fingerprint and self.weights_fingerprint != target.weights_fingerprint():
            raise ValueError(
                f"features were extracted with {self.target!r} weights {self.weights!r} (fingerprint "
                f"{self.weights_fingerprint}), but the target has weights {target.weights!r} (fingerprint "
                f"{target.weights_fingerprint()}). Invert them with the weights that made them "
                f"(`--weights {self.weights}`, or `FeatureSet.to_target()`)."
            )

    def check(self, target: TargetNetwork) -> None:
        """Checks that ``target``, with its weights, could have produced these features."""
        self.check_provenance(target)
        if self.layer not in target.layer_names():
            raise ValueError(f"features come from layer {self.layer!r}, which {target.name!r} does not have.")
        check_features(self.features, target.feature_shape(self.layer, self.input_size))

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Writes a safetensors file atomically (a failed write leaves no partial file)."""
        path = Path(path)
        metadata = {
            "format": "diffinv.FeatureSet",
            "version": FORMAT_VERSION,
            "target": self.target,
            "layer": self.layer,
            "input_size": json.dumps(list(self.input_size)),
            "preprocessing": json.dumps(self.preprocessing),
            "sources": json.dumps(self.sources),
            "dtype": str(self.features.dtype).replace("torch.", ""),
            "shape": json.dumps(list(self.features.shape)),
            "weights": json.dumps(self.weights),
            "weights_fingerprint": json.dumps(self.weights_fingerprint),
            "defense": json.dumps(self.defense),
        }
        with atomic_path(path) as tmp:  # names `path` on a full disk
            _save_file({"features": self.features.contiguous().cpu()}, tmp, metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, target: TargetNetwork | None = None) -> FeatureSet:
        """Reads a file written by :meth:`save`; checks metadata against the tensor and ``target``."""
        path = check_regular_file(path, "feature file")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                features = f.get_tensor("features")
        except Exception as err:
            raise ValueError(f"{str(path)!r} is not a readable safetensors feature file: {err}") from err
        if metadata.get("format") != "diffinv.FeatureSet":
            raise ValueError(f"{str(path)!r} is not a diffinv FeatureSet file (no diffinv metadata).")

        required = object()

        def field(key: str, default=required, parse: bool = True):
            if key not in metadata:
                if default is not required:
                    return default
                raise ValueError(
                    f"feature file {str(path)!r} has no {key!r} in its metadata; the file is corrupt or "
                    f"was not written by `diffinv extract`."
                )
            try:
                return json.loads(metadata[key]) if parse else metadata[key]
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"feature file {str(path)!r}: metadata {key!r} = {metadata[key]!r} is not valid JSON "
                    f"({err}); the file is corrupt."
                ) from None

        shape = field("shape")
        dtype = field("dtype", parse=False)
        if list(features.shape) != shape or str(features.dtype).replace("torch.", "") != dtype:
            raise ValueError(
                f"{str(path)!r}: stored tensor {tuple(features.shape)} {features.dtype} does not match its "
                f"metadata {tuple(shape)} {dtype}; the file is corrupt."
            )
        fields = dict(  # read first: their errors carry the file's name already
            target=field("target", parse=False),
            layer=field("layer", parse=False),
            input_size=field("input_size"),
            preprocessing=field("preprocessing", {}),
            sources=field("sources", []),
            weights=field("weights", None),
            weights_fingerprint=field("weights_fingerprint", None),
            defense=field("defense", None),
        )
        try:
            _check_metadata(fields)
            fs = cls(features=features, **fields)
        except ValueError as err:
            raise ValueError(f"feature file {str(path)!r}: {err}") from None
        if fs.weights_fingerprint is None:
            warnings.warn(
                f"feature file {str(path)!r} records no weights fingerprint (`weights_fingerprint` is "
                f"{'null' if 'weights_fingerprint' in metadata else 'missing'}): the weights that made its "
                f"features cannot be checked, only the target's name {fs.target!r}. Extract the features "
                f"again with `diffinv extract` (or FeatureSet.extract) to record them.",
                stacklevel=2,
            )
        if target is not None:
            fs.check(target)
        return fs

    def to_target(self, weights: str | None = "recorded") -> TargetNetwork:
        """Rebuilds the target network these features came from (a known name), and checks it.

        Args:
            weights: ``"recorded"`` (default): the weights recorded in the features (pretrained,
                seeded random, or the same file); otherwise as for :meth:`TargetNetwork.from_name`.

        Raises:
            ValueError: the recorded weights cannot be rebuilt (unseeded random weights, a file that
                is gone), or the rebuilt target's weights differ from those that made the features.
        """
        if weights == "recorded":
            weights = self.weights or "default"
            if weights in ("random", "custom"):
                raise ValueError(
                    f"the features were made with {weights!r} weights of {self.target!r}, which cannot be rebuilt: "
                    f"pass the same network (TargetNetwork) instead, or extract features with seeded weights "
                    f"(`--weights random:0`)."
                )
            if weights not in ("default",) and not weights.startswith("random:") and not Path(weights).is_file():
                raise ValueError(
                    f"the features were made with the weight file {weights!r}, which is not on this machine; "
                    f"pass `--weights PATH` to that file."
                )
        size = self.preprocessing.get("input_size")
        target = TargetNetwork.from_name(
            self.target, layers=self.layer, weights=weights, input_size=tuple(size) if size else None
        )
        self.check_provenance(target)
        return target


def _check_metadata(fields: dict) -> None:
    """Raises ``ValueError`` for a metadata value of the wrong kind (what :meth:`FeatureSet.save` never writes)."""
    for key in ("weights", "weights_fingerprint", "defense"):
        if fields[key] is not None and not isinstance(fields[key], str):
            raise ValueError(f"metadata {key!r} must be a string or null, got {cut_short(repr(fields[key]))}.")
    fingerprint = fields["weights_fingerprint"]
    if fingerprint is not None and not re.fullmatch(r"[0-9a-f]{16}", fingerprint):
        raise ValueError(f"metadata 'weights_fingerprint' must be 16 hex digits, got {cut_short(repr(fingerprint))}.")
    preprocessing = fields["preprocessing"]
    if not isinstance(preprocessing, dict):
        raise ValueError(f"metadata 'preprocessing' must be a JSON object, got {cut_short(repr(preprocessing))}.")
    if preprocessing.get("input_size") is not None:
        check_input_size(preprocessing["input_size"], "preprocessing.input_size")


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``, its I/O errors raised as ``OSError`` (with their errno: a full disk is named by
    :func:`~diffinv.io.atomic_path`)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:  # "Error while serializing: I/O error: No space left on device (os error 28)"
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from err


def _preprocessing(target: TargetNetwork) -> dict:
    return {
        "input_size": list(target.input_size) if target.input_size else None,
        "mean": [round(v, 6) for v in target.mean.flatten().tolist()],
        "std": [round(v, 6) for v in target.std.flatten().tolist()],
        "range": "[0, 1] NCHW",
    }


def resolve_features(
    target: TargetNetwork,
    features: torch.Tensor | FeatureSet,
    image_size: tuple[int, int] | None,
    layer: str | None = None,
    *,
    input_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, str, tuple[int, int]]:
    """Validates ``features`` against ``target`` and returns ``(tensor, layer, image_size)``.

    A FeatureSet carries its layer and input size (a ``layer`` given must be its layer), and is
    checked to come from ``target`` with its weights; a plain tensor uses ``layer`` (or the
    target's single layer) and ``image_size`` (or the target's input size). The shape is checked
    with one probe forward pass at ``image_size``, the target resizing to ``input_size`` when
    given (:meth:`TargetNetwork.preprocess <diffinv.targets.TargetNetwork.preprocess>`).
    """
    if isinstance(features, FeatureSet):
        if layer is not None and layer != features.layer:
            raise ValueError(f"`layer` is {layer!r} but the FeatureSet's features come from {features.layer!r}.")
        features.check_provenance(target)
        layer = features.layer
        if layer not in target.layer_names():
            raise ValueError(f"features come from layer {layer!r}, which {target.name!r} does not have.")
        image_size = image_size or features.input_size
        tensor = features.features
    else:
        layer = layer or target.layer
        image_size = image_size or input_size or target.input_size
        tensor = features
        if image_size is None:
            raise ValueError("`image_size` is required when `features` is a tensor and the target has no input size.")
    image_size = check_input_size(image_size, "image_size")
    check_features(tensor, target.feature_shape(layer, image_size, input_size=input_size))
    if len(tensor) == 0:
        raise ValueError("`features` holds no feature maps (an empty batch); give at least one.")
    return tensor, layer, image_size
