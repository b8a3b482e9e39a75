"""The registry: every method by name, and :func:`build_inverter`, which the command line and the app call.

A method is a name of :data:`INVERTERS` or a hybrid ``START+REFINER`` (:data:`HYBRID_METHODS`): a
refiner (:data:`REFINERS`: the diffusion chain, or pixel optimization) started from another method's
estimate, as ``build_inverter(REFINER, target, init=START)`` does (``init`` may also be an image file). Options are checked before anything is
loaded (:func:`inverter_spec`): the option's name against the method's config and constructor, its
value against the config's rule, the model folders it names against the files they need. Every
error is a :class:`~diffinv.inverters.config.OptionError` (a ``ValueError``) that names the option,
the value and what was expected.

Two names mean the same for every method (the command line's ``--iterations``/``--steps``, the app's
fields): ``iterations`` is diffusion's ``num_iterations``, and ``steps`` is ``num_inference_steps`` of
diffusion and mapper (:data:`ALIASES`). In a hybrid each option goes to every part that takes it
(``model``, ``steps``, ``prompt``, ``iterations``, ...), except ``strength``: the hybrid's img2img
strength, not the start's (a mapper start keeps its own estimate, strength 0), and a pixel
refinement's ``learning_rate`` (default :data:`~diffinv.inverters.pixel.REFINE_LEARNING_RATE`); a
``model`` that is a loaded pipeline, not a name or folder, is the chain's only.

Example:
    >>> inverter = build_inverter("pixel", target, iterations=200)
    >>> hybrid = build_inverter("decoder+diffusion", target, model="path/to/sd15", decoder="decoders/")
    >>> refined = build_inverter("dip+pixel", target)  # DIP, then a pixel refinement of its images
    >>> build_inverter("pixel", target, iterations=0)
    OptionError: method 'pixel': `iterations` must be a positive integer, got 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..models.gan import biggan_files, is_random_biggan
from ..models.learned import resolve_model_dir
from ..pipelines.definitions import DEFINITIONS, check_model_dir, is_local_path
from ..targets import TargetNetwork
from .base import Inverter
from .config import OptionError, check_option_names
from .decoder import DecoderInverter
from .diffusion import HYBRID_STRENGTH, DiffusionInverter
from .dip import DIPInverter
from .gan import GANInverter
from .mapper import MapperInverter
from .pixel import REFINE_LEARNING_RATE, PixelInverter

__all__ = [
    "ALIASES",
    "HYBRID_METHODS",
    "INVERTERS",
    "METHODS",
    "REFINERS",
    "START_METHODS",
    "InverterSpec",
    "build_inverter",
    "inverter_spec",
    "method_options",
    "options_for",
]

INVERTERS: dict[str, type[Inverter]] = {
    cls.name: cls for cls in (DiffusionInverter, PixelInverter, DIPInverter, GANInverter, MapperInverter, DecoderInverter)
}
START_METHODS = ("decoder", "mapper", "dip", "gan")  # estimates a refiner can start from (``init``)
REFINERS = ("diffusion", "pixel")  # methods that refine a start's estimate (RefiningInverter)
HYBRID_METHODS = tuple(f"{start}+{refiner}" for refiner in REFINERS for start in START_METHODS)
METHODS = tuple(INVERTERS) + HYBRID_METHODS
# Method-independent names -> each method's own option.
ALIASES: dict[str, dict[str, str]] = {
    "diffusion": {"iterations": "num_iterations", "steps": "num_inference_steps"},
    "mapper": {"steps": "num_inference_steps"},
}
# The option a method cannot do without, and what it is.
REQUIRED = {
    "decoder": ("decoder", "a trained decoder or its folder (from `diffinv train-decoder`)"),
    "mapper": ("mapper", "a trained mapper or its folder (from `diffinv train-mapper`)"),
    "diffusion": ("model", "a diffusers Stable Diffusion folder, or tiny/sd15/sd-turbo for random weights"),
}


def _split(name: str, init) -> tuple[str, str | None]:
    """``(method, start)`` of a method name (or hybrid name) and the ``init`` option."""
    if not isinstance(name, str) or name not in METHODS:
        raise OptionError("?", "method", name, message=f"`method` {name!r} is not one of {', '.join(METHODS)}.")
    if name in HYBRID_METHODS:
        start, refiner = name.split("+")
        if init is not None and init != start:
            raise OptionError(name, "init", init, message=f"method {name!r} starts from {start}, but `init` is "
                                                           f"{init!r}; give one of them.")
        return refiner, start
    if init is not None and name not in REFINERS:
        raise OptionError(name, "init", init, message=f"`init` {init!r} starts a refinement ({', '.join(REFINERS)}); "
                                                       f"it does not apply to method {name!r}.")
    return name, None if init in (None, "noise") else os.fspath(init)


def _options_of(method: str, start: str | None) -> tuple[str, ...]:
    """The options of ``method`` started from ``start`` (a start method, an image file or ``None``)."""
    names = [*INVERTERS[method].option_names(), *ALIASES.get(method, {})]
    if start in START_METHODS:
        names += [*INVERTERS[start].option_names(), *ALIASES.get(start, {})]
    return tuple(dict.fromkeys(n for n in names if n != "start" or start is None))


def method_options(name: str) -> tuple[str, ...]:
    """Every option method ``name`` takes: its config's fields, its constructor's other keywords and the
    :data:`ALIASES` it understands; a hybrid's are those of its parts; diffusion's include ``init``
    and the options of every start method (each applies once ``init`` names that method)."""
    method, start = _split(name, None)
    if method not in REFINERS:
        return _options_of(method, None)
    names = list(_options_of(method, start)) + ["init"]
    for part in (start,) if start else START_METHODS:
        names += _options_of(part, None)
    return tuple(dict.fromkeys(names))


def options_for(name: str, **candidates) -> dict:
    """The ``candidates`` that method ``name`` takes (started from ``candidates["init"]``, if any),
    ``None`` values dropped: for callers that hold the options of several methods at once (the command
    line's flags, the app's fields).

    Raises:
        OptionError: an unknown method, or an ``init`` that does not apply to it.
    """
    method, start = _split(name, candidates.get("init"))
    taken = _options_of(method, start) + (("init",) if method in REFINERS else ())
    return {k: v for k, v in candidates.items() if v is not None and k in taken}


def _part_options(method: str, options: Mapping) -> dict:
    """The options of ``options`` that ``method`` takes, aliases translated to its own names."""
    aliases = ALIASES.get(method, {})
    taken = INVERTERS[method].option_names()
    out = {}
    for key, value in options.items():
        key = aliases.get(key, key)
        if key in taken:
            out[key] = value
    return out


def _check_folders(method: str, options: Mapping) -> None:
    """The model folders ``options`` name hold what they need (FileNotFoundError/ValueError from the loaders)."""
    for kind in ("decoder", "mapper"):
        if isinstance(options.get(kind), (str, os.PathLike)):
            resolve_model_dir(options[kind], kind=kind)
    model = options.get("model")
    if isinstance(model, (str, os.PathLike)) and os.fspath(model) not in DEFINITIONS:
        path = Path(model).expanduser()
        if is_local_path(os.fspath(model)) or path.exists():
            if not path.is_dir():
                raise OptionError(method, "model", os.fspath(model), message=(
                    f"method {method!r}: `model` {os.fspath(model)!r} is not a folder; expected a diffusers Stable "
                    f"Diffusion folder, or {', '.join(DEFINITIONS)} for random weights."))
            check_model_dir(str(path))
    taesd = options.get("taesd")
    if isinstance(taesd, (str, os.PathLike)) and os.fspath(taesd) != "random":
        path = Path(taesd).expanduser()
        if (is_local_path(os.fspath(taesd)) or path.exists()) and not (path / "config.json").is_file():
            what = "is not a TAESD folder (no config.json)" if path.exists() else "does not exist"
            raise OptionError(method, "taesd", os.fspath(taesd), message=(
                f"method {method!r}: `taesd` {os.fspath(taesd)!r} {what}; expected a "
                f"folder with an AutoencoderTiny's config.json and weights (a copy of madebyollin/taesd), or random."))
    gan = options.get("gan")
    if method == "gan" and isinstance(gan, (str, os.PathLike)) and not is_random_biggan(os.fspath(gan)):
        biggan_files(gan, cache_dir=options.get("cache_dir"))


@dataclass
class InverterSpec:
    """A checked method and its options: :meth:`build` makes the inverter for a target.

    Attributes:
        method: the inverter's name (``diffusion`` for a hybrid).
        options: the keyword arguments of its class.
        start: a hybrid's start: the spec of the start method, or an image file.
    """

    method: str
    options: dict = field(default_factory=dict)
    start: InverterSpec | str | None = None

    def build(self, target: TargetNetwork) -> Inverter:
        """The inverter of this spec for ``target`` (loading the models it names)."""
        options = dict(self.options)
        if isinstance(self.start, InverterSpec):
            options["start"] = self.start.build(target)
        elif self.start is not None:
            options["start"] = self.start
        return INVERTERS[self.method](target, **options)


def _single_spec(method: str, options: Mapping) -> InverterSpec:
    cls = INVERTERS[method]
    required = REQUIRED.get(method)
    if required is not None and options.get(required[0]) is None:
        raise OptionError(method, required[0], None,
                          message=f"method {method!r} needs `{required[0]}`: {required[1]}.")
    config_options = {k: v for k, v in options.items() if k in cls.config_class.option_names()}
    cls.make_config(None, config_options)  # checks the values now, before anything is loaded
    _check_folders(method, options)
    return InverterSpec(method, dict(options))


def inverter_spec(name: str, **options) -> InverterSpec:
    """Checks method ``name`` (one of :data:`METHODS`) and its ``options``, loading nothing.

    Args:
        name: a method of :data:`INVERTERS`, or a hybrid ``START+diffusion``.
        **options: the method's options (:func:`method_options`); for diffusion also ``init``: a method
            of :data:`START_METHODS` or an image file to start the chain from (a hybrid).

    Returns:
        :class:`InverterSpec`.

    Raises:
        OptionError: an unknown method; an option the method does not take (the message lists those it
            takes); a value its config refuses; a required option missing (a decoder's, a mapper's folder,
            the diffusion model); a hybrid with ``strength`` 0 or an ``init`` that is neither a start
            method nor an image file.
        FileNotFoundError: a model folder without the files it needs (the loaders' messages say how to
            provide them).
    """
    method, start = _split(name, options.pop("init", None))
    check_option_names(name, options, _options_of(method, start))
    if start is None:
        return _single_spec(method, _part_options(method, options))

    # A hybrid: the refiner (the diffusion chain from img2img `strength`, or pixel optimization) refines
    # the start's estimate
    if start in INVERTERS and start not in START_METHODS:
        raise OptionError(name, "init", start, message=f"`init` {start!r}: a refinement starts from one of "
                                                        f"{', '.join(START_METHODS)} or an image file.")
    own = {}  # the refinement's options that its start does not share
    if method == "diffusion":
        strength = options.get("strength")
        own["strength"] = HYBRID_STRENGTH if strength is None else strength
        if own["strength"] == 0:
            raise OptionError(name, "strength", 0, message="`strength` 0 with a hybrid start: the start must be "
                                                            "noised into the chain; expected (0, 1].")
    else:
        learning_rate = options.get("learning_rate")
        own["learning_rate"] = REFINE_LEARNING_RATE if learning_rate is None else learning_rate
    refinement = _single_spec(method, {**_part_options(method, options), **own})
    if start in START_METHODS:
        start_options = {k: v for k, v in options.items() if k not in own}
        if not isinstance(options.get("model"), (str, os.PathLike)):  # a loaded pipeline is the chain's only
            start_options.pop("model", None)
        if start == "mapper" and method == "diffusion":  # the start is the mapper's own estimate
            start_options["strength"] = 0.0
        refinement.start = _single_spec(start, _part_options(start, start_options))
    else:
        if not Path(start).expanduser().is_file():
            raise OptionError(name, "init", start, message=f"`init` {start!r} is neither one of "
                                                            f"{', '.join(START_METHODS)} nor an existing image file.")
        refinement.start = str(Path(start).expanduser())
    return refinement


def build_inverter(name: str, target: TargetNetwork, **options) -> Inverter:
    """The inverter of method ``name`` with ``options`` for ``target``: :func:`inverter_spec` then
    :meth:`InverterSpec.build`.

    Example:
        >>> build_inverter("mapper+diffusion", target, model="path/to/sd15", mapper="mappers/", steps=20)
    """
    return inverter_spec(name, **options).build(target)
