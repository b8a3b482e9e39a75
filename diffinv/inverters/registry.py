"""The registry: every method by name, and :func:`build_inverter`, which the command line and the app call.

A method is one unit: its :class:`~diffinv.inverters.Inverter` class declares everything about it (its
config and each option's rule, flag and help, the options it requires, its roles in hybrids, its
capabilities, its memory cost), and this registry reads those declarations. :data:`INVERTERS` holds
the built-in methods and those of the entry-point group ``diffinv.inverters`` (:mod:`diffinv.plugins`).
A hybrid ``START+REFINER`` (:data:`HYBRID_METHODS`) is a refiner started from another method's estimate.
Options are checked before anything is loaded (:func:`inverter_spec`); every error is an
:class:`~diffinv.inverters.config.OptionError` naming the option, the value and what was expected.

Example:
    >>> inverter = build_inverter("pixel", target, iterations=200)
    >>> hybrid = build_inverter("decoder+diffusion", target, model="path/to/sd15", decoder="decoders/")
    >>> build_inverter("pixel", target, iterations=0)
    OptionError: method 'pixel': `iterations` must be a positive integer, got 0.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..plugins import Units
from ..targets import TargetNetwork
from .base import Inverter
from .config import OptionError, check_option_names
from .decoder import DecoderInverter
from .diffusion import DiffusionInverter
from .dip import DIPInverter
from .gan import GANInverter
from .mapper import MapperInverter
from .pixel import PixelInverter

__all__ = [
    "HYBRID_METHODS",
    "INVERTERS",
    "INVERTER_NAMES",
    "METHODS",
    "REFINERS",
    "START_METHODS",
    "InverterSpec",
    "build_inverter",
    "inverter_spec",
    "memory_costs",
    "method_options",
    "options_for",
]

# The built-in methods, in the order the command line lists them: white-box first, then black-box.
_BUILT_IN = (DiffusionInverter, PixelInverter, DIPInverter, GANInverter, MapperInverter, DecoderInverter)
GROUP = "diffinv.inverters"


class _Names(Sequence):
    """A tuple of names computed from :data:`INVERTERS` when first read (plugins included)."""

    def __init__(self, names):
        self._names = names

    @functools.cached_property
    def _values(self) -> tuple[str, ...]:
        return tuple(self._names())

    def __getitem__(self, index):
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)

    def __eq__(self, other):
        return tuple(self) == tuple(other)

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(self._values)


# Method name -> inverter class: the built-in ones, then the plugins of GROUP (read on first use).
INVERTERS: Mapping[str, type[Inverter]] = Units(
    GROUP,
    lambda: {cls.name: cls for cls in _BUILT_IN},
    lambda name, cls: isinstance(cls, type) and issubclass(cls, Inverter) and cls.name == name,
    "an Inverter subclass whose `name` is NAME",
)
# Estimates a refiner can start from (``init``), and the methods that refine a start's estimate (RefiningInverter).
START_METHODS = _Names(lambda: (n for n, cls in INVERTERS.items() if "start" in cls.roles))
REFINERS = _Names(lambda: (n for n, cls in INVERTERS.items() if "refiner" in cls.roles))
HYBRID_METHODS = _Names(lambda: (f"{start}+{refiner}" for refiner in REFINERS for start in START_METHODS))
METHODS = _Names(lambda: (*INVERTERS, *HYBRID_METHODS))
INVERTER_NAMES = _Names(lambda: iter(INVERTERS))  # the single methods (no hybrids)


def _split(name: str, init) -> tuple[str, str | None]:
    """``(method, start)`` of a method name (or hybrid name) and the ``init`` option."""
    if not isinstance(name, str) or name not in METHODS:
        raise OptionError("?", "method", name, message=f"`method` {name!r} is not one of {', '.join(METHODS)}.")
    if name in HYBRID_METHODS:
        start, refiner = name.split("+")
        if init is not None and init != start:
            raise OptionError(
                name,
                "init",
                init,
                message=f"method {name!r} starts from {start}, but `init` is {init!r}; give one of them.",
            )
        return refiner, start
    if init is not None and name not in REFINERS:
        raise OptionError(
            name,
            "init",
            init,
            message=f"`init` {init!r} starts a refinement ({', '.join(REFINERS)}); "
            f"it does not apply to method {name!r}.",
        )
    return name, None if init in (None, "noise") else os.fspath(init)


def _options_of(method: str, start: str | None) -> tuple[str, ...]:
    """The options of ``method`` started from ``start`` (a start method, an image file or ``None``)."""
    names = list(INVERTERS[method].option_names())
    if start in START_METHODS:
        names += INVERTERS[start].option_names()
    return tuple(dict.fromkeys(n for n in names if n != "start" or start is None))


def method_options(name: str) -> tuple[str, ...]:
    """Every option method ``name`` takes: its config's fields and its constructor's other keywords; a
    hybrid's are those of its parts; a refiner's include ``init`` and the options of every start method
    (each applies once ``init`` names that method)."""
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
    """The options of ``options`` that ``method`` takes."""
    taken = INVERTERS[method].option_names()
    return {key: value for key, value in options.items() if key in taken}


@dataclass
class InverterSpec:
    """A checked method and its options: :meth:`build` makes the inverter for a target.

    Attributes:
        method: the inverter's name (the refiner's for a hybrid).
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
    for required, what in cls.required.items():
        if options.get(required) is None:
            raise OptionError(method, required, None, message=f"method {method!r} needs `{required}`: {what}.")
    config_options = {k: v for k, v in options.items() if k in cls.config_class.option_names()}
    cls.make_config(None, config_options)  # checks the values now, before anything is loaded
    cls.check_options(options)
    return InverterSpec(method, dict(options))


def inverter_spec(name: str, **options) -> InverterSpec:
    """Checks method ``name`` (one of :data:`METHODS`) and its ``options``, loading nothing.

    The option's name is checked against the method's, its value against the config's rule, the folders it
    names by the method's own ``check_options``. A hybrid ``START+REFINER`` is a refiner (a method with the
    role ``"refiner"``: the diffusion chain, or pixel optimization) started from another method's estimate
    (the role ``"start"``), as ``inverter_spec(REFINER, init=START)`` (``init`` may also be an image file).
    In a hybrid each option goes to every part that takes it (``model``, ``prompt``, ``iterations``, ...),
    except the refiner's own (its ``refine_defaults``: diffusion's img2img ``strength``, a pixel
    refinement's ``learning_rate``); a ``model`` that is a loaded pipeline, not a name or folder, is the
    chain's only.

    Args:
        name: a method of :data:`INVERTERS`, or a hybrid ``START+REFINER``.
        **options: the method's options (:func:`method_options`); for a refiner also ``init``: a method
            of :data:`START_METHODS` or an image file to start from (a hybrid).

    Returns:
        :class:`InverterSpec`.

    Raises:
        OptionError: an unknown method; an option the method does not take (the message lists those it
            takes); a value its config refuses; a required option missing (a decoder's, a mapper's folder,
            the diffusion model); a refinement its refiner refuses (diffusion's ``strength`` 0); an
            ``init`` that is neither a start method nor an image file.
        FileNotFoundError: a model folder without the files it needs (the loaders' messages say how to
            provide them).
    """
    method, start = _split(name, options.pop("init", None))
    check_option_names(name, options, _options_of(method, start))
    if start is None:
        return _single_spec(method, _part_options(method, options))

    # A hybrid: the refiner refines the start's estimate, with its own options (refine_defaults) apart
    if start in INVERTERS and start not in START_METHODS:
        raise OptionError(
            name,
            "init",
            start,
            message=f"`init` {start!r}: a refinement starts from one of {', '.join(START_METHODS)} or an image file.",
        )
    refiner = INVERTERS[method]
    own = {
        key: default if options.get(key) is None else options[key] for key, default in refiner.refine_defaults.items()
    }
    refiner.check_refinement(own)
    refinement = _single_spec(method, {**_part_options(method, options), **own})
    if start in START_METHODS:
        start_options = {k: v for k, v in options.items() if k not in own}
        if not isinstance(options.get("model"), (str, os.PathLike)):  # a loaded pipeline is the chain's only
            start_options.pop("model", None)
        refinement.start = _single_spec(start, _part_options(start, start_options))
    else:
        if not Path(start).expanduser().is_file():
            raise OptionError(
                name,
                "init",
                start,
                message=f"`init` {start!r} is neither one of {', '.join(START_METHODS)} nor an existing image file.",
            )
        refinement.start = str(Path(start).expanduser())
    return refinement


def build_inverter(name: str, target: TargetNetwork, **options) -> Inverter:
    """The inverter of method ``name`` with ``options`` for ``target``: :func:`inverter_spec` then
    :meth:`InverterSpec.build`.

    Example:
        >>> build_inverter("mapper+diffusion", target, model="path/to/sd15", mapper="mappers/", num_inference_steps=20)
    """
    return inverter_spec(name, **options).build(target)


def memory_costs(methods: Sequence[str], options: Mapping | None = None) -> dict[str, functools.partial]:
    """Each method's declared memory cost (``Inverter.memory_cost``) with the ``options`` it takes, by
    name, for :func:`~diffinv.resources.estimate_memory`: a hybrid counts as its parts; a refiner's
    ``init`` that names a start method counts too.

    Raises:
        OptionError: an unknown method.
    """
    options = dict(options or {})
    names = []
    for method in methods:
        refiner, start = _split(method, None)
        names += [refiner, *([start] if start else [])]
    if options.get("init") in START_METHODS:
        names.append(options["init"])
    return {
        name: functools.partial(INVERTERS[name].memory_cost, _part_options(name, options))
        for name in dict.fromkeys(names)
    }
