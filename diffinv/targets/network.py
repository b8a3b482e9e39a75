"""The target network: :class:`TargetNetwork`, a frozen image network and the layers whose features we invert."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..truncation import LayerGraph, ShadowForward
from .errors import SplitUnavailable, _shown
from .loader import IMAGENET_MEAN, IMAGENET_STD
from .registry import target_loader
from .weights import _weights_record

__all__ = ["TargetNetwork", "imagenet_categories"]


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

    # Its public path, the one a saved pipeline records (model_index.json: ``["diffinv.targets", "TargetNetwork"]``).
    __module__ = "diffinv.targets"

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


def _substitute(output, replacement: torch.Tensor, layer: str) -> torch.Tensor:
    """What a split layer outputs instead of ``output`` (:meth:`TargetNetwork.split_logits`): ``replacement``."""
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != tuple(replacement.shape):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise SplitUnavailable(
            f"layer {layer!r} outputs {shape}, not one tensor of the features' shape "
            f"{tuple(replacement.shape)}; the rest of the network cannot run from them."
        )
    return replacement.to(output)


def _last_feature_module(model: nn.Module) -> str:
    names = [n for n, m in model.named_children()]
    for name in reversed(names):
        if name not in ("fc", "classifier", "head", "global_pool", "avgpool", "dropout"):
            return name
    return names[-1]
