"""What every inverter config shares: checked hyper-parameters, and the capabilities a method declares.

Each method has a frozen dataclass (``PixelConfig``, ``DIPConfig``, ...) next to its inverter. Its
*fields* are the hyper-parameters that define the results (they are the run manifest's settings,
with a fingerprint of each model folder: :meth:`InverterConfig.settings`); each field carries its
rule (:func:`option`), checked when the config is made, so a wrong value fails with the option, the
value and what was expected. Its *class variables* are the capabilities the jobs read instead of
inspecting signatures (``accepts_init``, ``accepts_anchor``, ...: :class:`InverterConfig`).

Example:
    >>> PixelConfig(iterations=0)
    OptionError: method 'pixel': `iterations` must be a positive integer, got 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..io import fingerprint_path

__all__ = [
    "COMPILE_HELP",
    "FEATURE_LOSSES",
    "RULES",
    "ImageOptimizerConfig",
    "InverterConfig",
    "OptionError",
    "OptionInfo",
    "check_option_names",
    "option",
]

FEATURE_LOSSES = ("nmse", "mse", "cosine")
_PLAIN = (bool, int, float, str, type(None))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The rules a field can carry: what is expected (for the message) and the test.
RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "positive_int": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "non_negative_int": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "positive": ("a finite number > 0", lambda v: _is_number(v) and v > 0),
    "non_negative": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    "unit": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "optional_truncation": (
        "a number in (0, 1] (None: a generator without truncation)",
        lambda v: v is None or _is_number(v) and 0 < v <= 1,
    ),
    "optional_positive": ("a finite number > 0 or None", lambda v: v is None or _is_number(v) and v > 0),
    "optional_non_negative": ("a finite number >= 0 or None", lambda v: v is None or _is_number(v) and v >= 0),
    "optional_non_negative_int": ("an integer >= 0 or None", lambda v: v is None or _is_int(v) and v >= 0),
    "optional_bool": ("True, False or None", lambda v: v is None or isinstance(v, bool)),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "optional_str": ("a string or None", lambda v: v is None or isinstance(v, str)),
    "compile": ("True, False or a torch.compile backend name", lambda v: isinstance(v, (bool, str))),
    "channels": (
        "a non-empty sequence of positive integers",
        lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(c) and c >= 1 for c in v),
    ),
    "classes": (
        "None, a class index or a list of class indices",
        lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(_is_int(c) for c in v)),
    ),
    "prompt": (
        "None, a string or a list of strings",
        lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
    ),
}


# The help of options that several methods share (one text, one flag).
COMPILE_HELP = (
    "run the networks through torch.compile, in a mode of diffinv.compilation.MODES (bare: default; "
    "reduce-overhead uses CUDA graphs). The same results; the first iterations compile, up to a minute "
    "on CPU, where the compiled networks were not faster; a compile failure falls back to eager with one "
    "warning"
)


class OptionError(ValueError):
    """An option a method does not have, or a value it refuses; names the option, the value and what was
    expected (``.method``, ``.option``, ``.value``), so the command line can name its flag.

    Example:
        >>> str(OptionError("pixel", "iterations", 0, "a positive integer"))
        "method 'pixel': `iterations` must be a positive integer, got 0."
    """

    def __init__(
        self,
        method: str,
        option: str,
        value,
        expected: str | None = None,
        *,
        allowed: tuple[str, ...] | None = None,
        message: str | None = None,
    ):
        self.method, self.option, self.value = method, option, value
        if message is None and allowed is not None:
            message = f"method {method!r} has no option `{option}`; its options are: {', '.join(allowed)}."
        elif message is None:
            message = f"method {method!r}: `{option}` must be {expected}, got {value!r}."
        super().__init__(message)


@dataclass(frozen=True)
class OptionInfo:
    """What a method declares about one option, beside its value: its check and its command-line face.

    Attributes:
        rule: a rule of :data:`RULES` (``None``: any value, or ``choices``).
        choices: the allowed values.
        help: the option's ``--help`` text; an option without one has no flag (Python callers only).
        flag: its flag (default ``--`` and the name with dashes); methods that share an option share it.
        values: the words the flag takes and the option value each means (``{"grey": True, ...}``).
        metavar: the flag's metavar in ``--help``.
    """

    rule: str | None = None
    choices: tuple | None = None
    help: str | None = None
    flag: str | None = None
    values: Mapping[str, Any] | None = None
    metavar: str | None = None

    def flag_for(self, name: str) -> str:
        """The flag of option ``name``."""
        return self.flag or "--" + name.replace("_", "-")


def option(
    default,
    rule: str | None = None,
    *,
    choices: tuple | None = None,
    help: str | None = None,
    flag: str | None = None,
    values: Mapping[str, Any] | None = None,
    metavar: str | None = None,
):
    """A config field with its check (a rule of :data:`RULES`, or ``choices``, the allowed values) and,
    with ``help``, its command-line flag (:class:`OptionInfo`)."""
    if rule is not None and rule not in RULES:
        raise ValueError(f"`rule` must be one of {', '.join(RULES)}, got {rule!r}.")
    info = OptionInfo(rule, choices, help, flag, values, metavar)
    return field(default=default, metadata={"rule": rule, "choices": choices, "option": info})


@dataclass(frozen=True)
class InverterConfig:
    """Base of the per-method configs (no hyper-parameters, no capabilities: a method that only
    subclasses :class:`~diffinv.inverters.Inverter` gets this one).

    Class variables:
        method: the method's name (in error messages).
        folders: the fields that name a model folder: :meth:`settings` adds the fingerprint of each
            that exists, as ``<field>_fingerprint``.
        derived: the fields the inverter fills in from what it loads (e.g. the folder a model was
            found in): settings, not options.

    Capabilities (class variables the jobs read instead of inspecting signatures):
        accepts_init: ``invert(init=images)`` warm-starts from given images (video windows).
        accepts_anchor: ``invert(anchor=image)`` puts a fixed image before the first one in the
            temporal term (the previous video frame).
        accepts_feature_transform: the method optimizes the feature loss of
            :func:`~diffinv.inverters.optimize`, so ``invert(feature_transform=...)`` reaches it (the
            adaptive attacker of ``diffinv audit``).
        streams_images: the ``callback``'s ``render()`` gives the current images (the app streams them).
        temporal: the config has ``temporal_weight`` (smoothing between consecutive frames).
    """

    method: ClassVar[str] = "inverter"
    folders: ClassVar[tuple[str, ...]] = ()
    derived: ClassVar[tuple[str, ...]] = ()
    accepts_init: ClassVar[bool] = False
    accepts_anchor: ClassVar[bool] = False
    accepts_feature_transform: ClassVar[bool] = False
    accepts_early_stop: ClassVar[bool] = False
    streams_images: ClassVar[bool] = False

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            rule, choices = f.metadata.get("rule"), f.metadata.get("choices")
            if rule == "classes" and (_is_int(value) or isinstance(value, tuple)):
                value = [value] if _is_int(value) else list(value)
            if rule == "channels" and isinstance(value, list):
                value = tuple(value)
            if choices is not None and value not in choices:
                raise OptionError(self.method, f.name, value, f"one of {', '.join(map(repr, choices))}")
            if rule is not None and not RULES[rule][1](value):
                raise OptionError(self.method, f.name, value, RULES[rule][0])
            object.__setattr__(self, f.name, value)

    @property
    def temporal(self) -> bool:
        """Whether the method smooths consecutive frames (:meth:`is_temporal`)."""
        return self.is_temporal()

    @classmethod
    def is_temporal(cls) -> bool:
        """Whether the method smooths consecutive frames: its config has a ``temporal_weight`` (λ)."""
        return any(f.name == "temporal_weight" for f in fields(cls))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The fields a caller may set, in their order (all but :attr:`derived`)."""
        return tuple(f.name for f in fields(cls) if f.name not in cls.derived)

    @classmethod
    def option_infos(cls) -> dict[str, OptionInfo]:
        """What each option declares (:class:`OptionInfo`), by name, in field order (all but :attr:`derived`)."""
        return {f.name: f.metadata.get("option", OptionInfo()) for f in fields(cls) if f.name not in cls.derived}

    def settings(self) -> dict:
        """The plain-valued fields (tuples as lists), sorted by name, and the fingerprint of every
        model folder (:attr:`folders`) that exists: what a run manifest records."""
        out = {}
        for name in sorted(f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, _PLAIN) or isinstance(value, list) and all(isinstance(v, _PLAIN) for v in value):
                out[name] = value
        for name in self.folders:
            value = out.get(name)
            if isinstance(value, str) and os.path.exists(value):
                out[f"{name}_fingerprint"] = fingerprint_path(value)
        return out

    def replace(self, **changes) -> InverterConfig:
        """A copy with ``changes`` (checked like a new config; an unknown name is a ValueError)."""
        check_option_names(self.method, changes, self.option_names())
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ImageOptimizerConfig(InverterConfig):
    """The config of a method that optimizes an image parameterization with
    :func:`~diffinv.inverters.optimize` (pixel, dip): it takes warm starts and a video anchor, optimizes
    through a feature transform, stops images early, and can render its images at every iteration."""

    accepts_init = True
    accepts_anchor = True
    accepts_feature_transform = True
    accepts_early_stop = True
    streams_images = True


def check_option_names(method: str, options: Mapping, allowed: tuple[str, ...] | list[str]) -> None:
    """:class:`OptionError` naming the first option of ``options`` that ``method`` does not have, and its options."""
    unknown = [name for name in options if name not in allowed]
    if unknown:
        raise OptionError(method, unknown[0], options[unknown[0]], allowed=tuple(allowed))
