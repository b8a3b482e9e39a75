"""The methods' flags, generated from what each method declares, and the options they give.

Every option that a method (plugins included) declares with a help text is one flag (:func:`method_flags`), shared
by the methods that take it; its help names them and their defaults. :func:`inverter_factory` maps the parsed flags
to the registry's options and reports an :class:`~diffinv.inverters.OptionError` with the flag it concerns.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch

from ...inverters import INVERTERS, OptionError, inverter_spec, options_for
from ...inverters.config import RULES, OptionInfo
from ...inverters.registry import HYBRID_METHODS, INVERTER_NAMES, REFINERS, START_METHODS
from ...inverters.sd_model import check_model_option
from .argtypes import (
    UsageError,
    _compile_mode,
    _number,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
    unit_float,
)
from .parser import add_device_arg

__all__ = [
    "HYBRID_METHODS",
    "METHODS",
    "MethodFlag",
    "add_method_args",
    "check_model_arg",
    "inverter_factory",
    "method_flags",
    "method_options_from_args",
]

METHODS = INVERTER_NAMES


@dataclasses.dataclass(frozen=True)
class MethodFlag:
    """One flag of the methods' options: the option it sets and the methods that declare it (with their infos)."""

    flag: str
    option: str
    infos: dict[str, OptionInfo]  # method -> what it declares about the option

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def value(self, args: argparse.Namespace):
        """The option's value from the parsed flag (``None``: not given)."""
        value = getattr(args, self.dest, None)
        if value == "":
            return None
        values = next((i.values for i in self.infos.values() if i.values), None)
        return values.get(value, value) if values and value is not None else value


def method_flags() -> dict[str, MethodFlag]:
    """The flag of every option that a method (plugins included) declares with a help text, by option name:
    one flag per option, shared by the methods that take it.

    Raises:
        ValueError: two methods declare the same option with different flags.
    """
    flags: dict[str, MethodFlag] = {}
    for method, cls in INVERTERS.items():
        for name, info in cls.option_infos().items():
            if info.help is None:
                continue
            flag = info.flag_for(name)
            known = flags.setdefault(name, MethodFlag(flag, name, {}))
            if known.flag != flag:
                raise ValueError(
                    f"option `{name}` of method {method!r} declares the flag {flag}, but "
                    f"{', '.join(known.infos)} declare {known.flag}; one option has one flag."
                )
            known.infos[method] = info
    return flags


def _default_text(entry: MethodFlag) -> str:
    """``(default X)``, or each method's own default where they differ; empty where there is none."""
    defaults = {}
    for method in entry.infos:
        cls = INVERTERS[method]
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
        shown = entry.option in fields and entry.option not in (*cls.required, *cls.config_class.derived)
        value = fields[entry.option].default if shown else None
        if value is not None and value is not dataclasses.MISSING and not isinstance(value, bool):
            defaults[method] = value
    if not defaults:
        return ""
    if len(set(map(repr, defaults.values()))) == 1 and len(defaults) == len(entry.infos):
        return f" (default {next(iter(defaults.values()))})"
    return " (default: " + ", ".join(f"{m} {v}" for m, v in defaults.items()) + ")"


def _flag_help(entry: MethodFlag) -> str:
    texts = {}
    for method, info in entry.infos.items():
        texts.setdefault(info.help, []).append(method)
    help = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in texts.items())
    return help + _default_text(entry)


# The argparse types of the rules on numbers that the command line's own flags share (the same messages).
_RULE_TYPES = {
    "positive_int": positive_int,
    "non_negative_int": non_negative_int,
    "positive": positive_float,
    "non_negative": non_negative_float,
    "unit": unit_float,
    "optional_positive": positive_float,
    "optional_non_negative": non_negative_float,
    "optional_non_negative_int": non_negative_int,
}


def _rule_type(expected: str, test) -> Callable[[str], object]:
    """An argparse ``type`` for a rule of :data:`~diffinv.inverters.config.RULES` on numbers."""
    cast = int if "integer" in expected else float
    return _number(cast, expected, test)


def _flag_kwargs(entry: MethodFlag) -> dict:
    """argparse's keywords for ``entry``, from its rule, choices, values and metavar."""
    info = next(iter(entry.infos.values()))
    kwargs = {"default": None, "help": _flag_help(entry)}
    if info.metavar:
        kwargs["metavar"] = info.metavar
    if info.values:
        return {**kwargs, "choices": tuple(info.values)}
    if info.choices:
        return {**kwargs, "choices": info.choices}
    if info.rule == "bool":
        return {**kwargs, "action": "store_const", "const": True}
    if info.rule == "compile":
        return {**kwargs, "nargs": "?", "const": True, "metavar": "MODE", "type": _compile_mode}
    if info.rule in _RULE_TYPES:
        return {**kwargs, "type": _RULE_TYPES[info.rule]}
    if info.rule in RULES and RULES[info.rule][0].startswith(("a positive", "an integer", "a finite", "a number")):
        expected, test = RULES[info.rule]
        expected = expected.split(" (None")[0].replace(" or None", "")  # the flag's None is "not given"
        return {**kwargs, "type": _rule_type(expected, test)}
    return kwargs


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The options of the methods, one flag each, generated from what the methods declare (:func:`method_flags`;
    each flag's help names the methods that take it), then ``--init`` (a hybrid's start) and ``--device``."""
    for entry in method_flags().values():
        p.add_argument(entry.flag, dest=entry.dest, **_flag_kwargs(entry))
    p.add_argument(
        "--init",
        default=None,
        metavar="|".join([*START_METHODS, "IMAGE"]),
        help=f"{', '.join(REFINERS)}: refine another method's estimate (with that method's own flags) or "
        f"an image file (a hybrid; `--method START+REFINER` means the same)",
    )
    add_device_arg(p)


def method_options_from_args(name: str, args: argparse.Namespace, device: torch.device | None = None) -> dict:
    """The options of method ``name`` that the command line's flags give (:func:`method_flags`, ``--init``,
    ``--device``), those it does not take left out."""
    flags = {entry.option: entry.value(args) for entry in method_flags().values()}
    flags["init"] = getattr(args, "init", None)
    flags["device"] = str(device or resolve_device(getattr(args, "device", "auto")))
    return options_for(name, **flags)


def _usage_error(err: OptionError) -> UsageError:
    """An :class:`OptionError` in the command line's words: the method as ``--method``, each option as its flag."""
    message = str(err).replace(f"method {err.method!r}", f"`--method {err.method}`")
    flags = {**{name: entry.flag for name, entry in method_flags().items()}, "init": "--init", "method": "--method"}
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", f"`{flag}`")
    return UsageError(message)


def check_model_arg(value: str) -> None:
    """``--model`` of a command that loads the pipeline itself: a diffusers folder with its files, a definition
    name or a Hub id (:func:`~diffinv.inverters.sd_model.check_model_option`)."""
    try:
        check_model_option("?", {"model": value})
    except OptionError as err:
        raise _usage_error(err) from None


def inverter_factory(name: str, args: argparse.Namespace, **extra):
    """``target -> Inverter`` for a method name (or a hybrid ``START+REFINER``) and the command-line options.

    The flags are mapped to the registry's options once (:func:`method_options_from_args`) and checked
    before any work by :func:`~diffinv.inverters.inverter_spec`; its errors are reported with the flag
    they concern. ``extra``: more options (e.g. a video's ``temporal_weight``).
    """
    try:
        spec = inverter_spec(name, **method_options_from_args(name, args), **extra)
    except OptionError as err:  # the registry's names -> the flags: `--method pixel`, `--iterations`
        raise _usage_error(err) from None
    return spec.build
