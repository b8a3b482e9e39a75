"""What every inverter shares: the result type and the ``invert()`` template.

:meth:`Inverter.invert` is written once: it resolves and checks the features, prepares the
method (loading learned models is timed apart), runs the method's own
:meth:`Inverter._reconstruct`, and scores the feature residual of what came out.
:class:`RefiningInverter` is a method that can refine another method's estimate (a hybrid). The
optimizing methods hand their parameterization to :func:`~diffinv.inverters.optimizing.optimize`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..features import FeatureSet, check_images, resolve_features
from ..io import fingerprint_path, load_images, pixels_fingerprint
from ..metrics import feature_residual
from ..resources import ComputeShape
from ..targets import TargetNetwork
from .config import InverterConfig, OptionInfo, check_option_names
from .optimizing import feature_stride, optimize  # re-exported: their public path was this module

__all__ = ["InversionOutput", "Inverter", "feature_stride", "optimize"]


@dataclass
class InversionOutput:
    """The result of any inverter.

    Attributes:
        images: ``(N, 3, H, W)`` reconstructions in [0, 1] (CPU, float32).
        loss_history: ``(iterations, N)`` per-image total loss at each iteration (``(0, N)``
            for methods that do not optimize).
        feature_residual: ``(N,)`` ``||f(x_hat) - f|| / ||f||`` of the returned images.
        seconds: wall time of the reconstruction (loading learned models excluded: see
            ``info["load_seconds"]``).
        method: the inverter's name.
        info: anything else worth keeping (skipped steps, hyper-parameters, ...).
    """

    images: torch.Tensor
    loss_history: torch.Tensor
    feature_residual: torch.Tensor
    seconds: float
    method: str
    info: dict = field(default_factory=dict)


class Inverter:
    """Base class: ``inverter(features, image_size) -> InversionOutput``.

    Subclasses set :attr:`name` (and :attr:`white_box`, :attr:`hybrid`) and :attr:`config_class` (the
    method's hyper-parameters and capabilities, :mod:`diffinv.inverters.config`), implement
    :meth:`_reconstruct`, and may override :meth:`_prepare` (load what the layer needs; timed apart).

    Attributes:
        config: the method's config (an instance of :attr:`config_class`): what defines its results
            and what it accepts (``config.accepts_init``, ...).
    """

    name = "inverter"
    white_box = True
    hybrid = False  # refines another method's estimate (see RefiningInverter)
    config_class: ClassVar[type[InverterConfig]] = InverterConfig
    # Keywords of the constructor that are not config fields (objects, devices): build_inverter accepts them too.
    extra_options: ClassVar[tuple[str, ...]] = ()
    # The command-line face of those of :attr:`extra_options` that have a flag (the config's fields declare their own).
    extra_flags: ClassVar[Mapping[str, OptionInfo]] = {}
    # The options the method cannot do without, each with what it is (the error when one is missing says it).
    required: ClassVar[Mapping[str, str]] = {}
    # Roles in a hybrid START+REFINER: "start" (a refiner can start from this method's estimate), "refiner".
    roles: ClassVar[frozenset[str]] = frozenset()
    # A refiner's own options in a hybrid and their defaults there; they do not reach the start.
    refine_defaults: ClassVar[Mapping[str, Any]] = {}
    # A model kind ("decoder", "mapper") that the method needs trained per layer: jobs that train their own
    # (atlas, audit) train one per layer and pass its folder as the option of that name.
    trained_model: ClassVar[str | None] = None

    def __init__(self, target: TargetNetwork, config: InverterConfig | None = None, **options):
        self.target = target
        self.config = self.make_config(config, options)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option the method takes: its config's fields, then :attr:`extra_options`."""
        return cls.config_class.option_names() + cls.extra_options

    @classmethod
    def option_infos(cls) -> dict[str, OptionInfo]:
        """What each option declares (its rule, flag and help: :class:`~diffinv.inverters.config.OptionInfo`)."""
        infos = cls.config_class.option_infos()
        return {**infos, **{k: cls.extra_flags.get(k, OptionInfo()) for k in cls.extra_options if k not in infos}}

    @classmethod
    def check_options(cls, options: Mapping) -> None:
        """Checks what ``options`` name on disk (model folders, files) before anything is loaded; default nothing.

        Raises:
            OptionError, FileNotFoundError: a folder or file that does not hold what the method needs.
        """

    @classmethod
    def check_refinement(cls, options: Mapping) -> None:
        """A refiner's check of its own options in a hybrid (:attr:`refine_defaults` applied); default nothing."""

    @classmethod
    def memory_cost(cls, options: Mapping, shape: ComputeShape) -> dict[str, int]:
        """The method's own peak memory for one batch of ``shape``, in bytes by part, with ``options`` (the
        target's share is counted apart: :func:`~diffinv.resources.estimate_memory`); default nothing."""
        return {}

    @classmethod
    def make_config(cls, config: InverterConfig | None = None, options: Mapping | None = None) -> InverterConfig:
        """``config`` (default: the defaults) updated by ``options``, checked.

        Raises:
            ValueError: an option the method does not have (the message lists its options), or a value
                its rule refuses (the message names the option, the value and what was expected).
        """
        options = dict(options or {})
        check_option_names(cls.name, options, cls.config_class.option_names())
        if config is None:
            return cls.config_class(**options)
        if not isinstance(config, cls.config_class):
            raise ValueError(
                f"`config` of method {cls.name!r} must be a {cls.config_class.__name__}, got {type(config).__name__}."
            )
        return config.replace(**options) if options else config

    @property
    def device(self) -> torch.device:
        """Where the target runs; reconstructions are made there."""
        return self.target.mean.device

    def invert(
        self,
        features: torch.Tensor | FeatureSet,
        image_size: tuple[int, int] | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
        callback: Callable[[int, torch.Tensor, Callable[[], torch.Tensor] | None], bool | None] | None = None,
        feature_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> InversionOutput:
        """Reconstructs images from ``features``.

        Args:
            features: a FeatureSet (it carries its layer and input size) or an ``(N, ...)`` tensor
                of the target's (single) layer.
            image_size: ``(H, W)``; default the FeatureSet's input size or the target's.
            generator: seeds every random choice of the method.
            progress: show a progress bar.
            callback: optimizing methods only: ``callback(iteration, per_image_loss, render)`` after
                each iteration, where ``render()`` returns the current images (CPU, [0, 1]; ``None``
                where the method cannot render cheaply: ``config.streams_images`` is False); returning
                ``True`` stops the optimization (each image keeps its best iterate so far).
            feature_transform: applied to the features of every candidate image inside the loss
                of :func:`optimize` (e.g. a defense, with fresh randomness per call: the adaptive
                attacker of ``diffinv audit``). Only for methods whose config has
                ``accepts_feature_transform``; others raise ``ValueError``.
            **kwargs: method-specific options: ``init`` (``config.accepts_init``) and ``anchor``
                (``config.accepts_anchor``) for video warm starts; ``early_stop``, an
                :class:`~diffinv.optimization.EarlyStopping` (``config.accepts_early_stop``).
        """
        if callback is not None:
            kwargs["callback"] = callback
        if feature_transform is not None:
            if not self.config.accepts_feature_transform:
                raise ValueError(
                    f"method {self.name!r} does not optimize the feature loss of `optimize()`, so it "
                    f"cannot take a `feature_transform`."
                )
            kwargs["feature_transform"] = feature_transform
        for key, capability in (
            ("init", "accepts_init"),
            ("anchor", "accepts_anchor"),
            ("early_stop", "accepts_early_stop"),
        ):
            if key in kwargs and not getattr(self.config, capability):
                raise ValueError(f"method {self.name!r} takes no `{key}` (its config's `{capability}` is False).")
        feats, layer, size = resolve_features(self.target, features, image_size)
        load_start = time.perf_counter()
        self.prepare(features, layer, size)
        start = time.perf_counter()
        images, history, info = self._reconstruct(
            feats.to(self.device), layer, size, generator=generator, progress=progress, **kwargs
        )
        images = images.detach().float().clamp(0, 1)
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        seconds = time.perf_counter() - start
        residual = feature_residual(self.target, images.to(self.device), feats, layer).cpu()
        info = {"load_seconds": start - load_start, **info}
        return InversionOutput(images.cpu(), history, residual, seconds, self.name, info)

    def __call__(self, *args, **kwargs) -> InversionOutput:
        return self.invert(*args, **kwargs)

    def check_image_size(self, size: tuple[int, int]) -> None:
        """Raises ``ValueError`` when the method cannot make images of ``size`` (default: any size)."""

    def prepare(self, features: torch.Tensor | FeatureSet, layer: str, size: tuple[int, int]) -> None:
        """Checks ``size`` and loads what inverting ``layer`` needs (before :meth:`start_images`;
        :meth:`invert` calls it itself)."""
        self.check_image_size(size)
        self._prepare(features, layer, size)

    def start_images(
        self,
        features: torch.Tensor,
        layer: str,
        size: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, dict]:
        """The method's estimate as the start of a hybrid: ``(images (N, 3, H, W) in [0, 1], info)``,
        ``info`` keeping the plain values the method reported. Call :meth:`prepare` first."""
        images, _, info = self._reconstruct(features, layer, size, generator=generator, progress=progress)
        info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, list))}
        return images.detach().float().clamp(0, 1), info

    @property
    def latent_start(self) -> bool:
        """Whether this method's estimate is a diffusion latent (see :meth:`start_mapper`); default False."""
        return False

    def start_mapper(self, layer: str):
        """A :class:`~diffinv.models.FeatureMapper` whose clean latents start the diffusion chain directly
        (``pipe(init="mapper")``: no decode to pixels and VAE re-encode), or ``None`` (default): the chain
        starts from :meth:`start_images`."""
        return None

    def _prepare(self, features: torch.Tensor | FeatureSet, layer: str, size: tuple[int, int]) -> None:
        """Loads and checks what inverting ``layer`` needs (learned models); default nothing."""

    def _reconstruct(
        self, features: torch.Tensor, layer: str, size: tuple[int, int], *, generator, progress: bool, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(images (N, 3, H, W) in [0, 1], loss history (iterations, N), info)``."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What defines this inverter's results (recorded in run manifests): its name and its config
        (:meth:`InverterConfig.settings`: the plain hyper-parameters and a fingerprint of every model
        folder it reads)."""
        return {"method": self.name, **self.config.settings()}


class RefiningInverter(Inverter):
    """An inverter that can refine another method's estimate, its ``start``: a *hybrid*
    (``START+diffusion``, ``START+pixel``). The start runs first, on the same features, and its time
    counts; its settings are part of the hybrid's.

    Args:
        start: an :class:`Inverter` of the same target, an image file (or a list of files, one per
            feature map), or a ``(N or 1, 3, H, W)`` tensor in [0, 1]; ``None``: the plain method.
    """

    extra_options: ClassVar[tuple[str, ...]] = ("start",)

    def __init__(
        self,
        target: TargetNetwork,
        config: InverterConfig | None = None,
        *,
        start: Inverter | str | os.PathLike | list | torch.Tensor | None = None,
        **options,
    ):
        super().__init__(target, config, **options)
        if isinstance(start, torch.Tensor):
            start = check_images(start, "start")
        elif isinstance(start, (str, os.PathLike)):
            start = [start]
        if isinstance(start, list) and not all(os.path.isfile(p) for p in start):
            missing = [os.fspath(p) for p in start if not os.path.isfile(p)]
            raise FileNotFoundError(f"`start` image file(s) {missing} do not exist.")
        if isinstance(start, Inverter) and start.target is not target:
            raise ValueError("`start` must be an inverter of the same target network.")
        self._start = start

    @property
    def hybrid(self) -> bool:
        """Whether the method refines another method's estimate (its ``start``)."""
        return self._start is not None

    @property
    def start(self):
        """The hybrid start: an Inverter, image files or a tensor (``None``: the plain method)."""
        return self._start

    def settings(self) -> dict:
        """The config, and the hybrid's start: its settings, or its files' or tensor's fingerprints."""
        out = super().settings()
        if isinstance(self._start, Inverter):
            out["start"] = self._start.settings()
        elif isinstance(self._start, list):
            out["start"] = [os.fspath(p) for p in self._start]
            out["start_fingerprint"] = [fingerprint_path(p) for p in self._start]
        elif self._start is not None:
            out["start"] = {"tensor": list(self._start.shape), "fingerprint": pixels_fingerprint(self._start)}
        return out

    def _prepare(self, features, layer, size):
        if isinstance(self._start, Inverter):
            self._start.prepare(features, layer, size)

    def _start_estimate(
        self, features: torch.Tensor, layer: str, size: tuple[int, int], *, generator, progress: bool
    ) -> tuple[torch.Tensor, dict]:
        """The hybrid's start images ``(N or 1, 3, H, W)`` at ``size`` and what the start method reported."""
        if isinstance(self._start, Inverter):
            images, info = self._start.start_images(features, layer, size, generator=generator, progress=progress)
            return images, {"start_method": self._start.name, "start_info": info}
        if isinstance(self._start, list):
            if len(self._start) not in (1, len(features)):
                raise ValueError(
                    f"`start` has {len(self._start)} image files for {len(features)} feature maps; give one "
                    f"per map, or one for all."
                )
            return load_images(self._start, size), {"start_method": "image"}
        return self._start, {"start_method": "image"}
