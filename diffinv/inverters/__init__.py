"""Inverters: one file per method behind one template (:class:`Inverter`), and the registry.

:data:`INVERTERS` maps each method name to its class, in the order the command line lists them:
white-box methods first (``diffusion``, ``pixel``, ``dip``, ``gan``), then black-box ones (``mapper``,
``decoder``), then those of plugins (the entry-point group ``diffinv.inverters``). :func:`build_inverter` builds any of them, or a hybrid ``START+diffusion`` /
``START+pixel``, from its name and options (:mod:`diffinv.inverters.registry`); each method's
hyper-parameters and capabilities are its config (:mod:`diffinv.inverters.config`).
"""

from .base import InversionOutput, Inverter, RefiningInverter
from .config import InverterConfig, OptionError
from .decoder import DecoderConfig, DecoderInverter
from .diffusion import DiffusionConfig, DiffusionInverter
from .dip import DIPConfig, DIPInverter
from .gan import GANConfig, GANInverter
from .mapper import MapperConfig, MapperInverter
from .optimizing import optimize
from .pixel import PixelConfig, PixelInverter
from .registry import (
    HYBRID_METHODS,
    INVERTERS,
    METHODS,
    REFINERS,
    START_METHODS,
    InverterSpec,
    build_inverter,
    inverter_spec,
    memory_costs,
    method_options,
    options_for,
)

__all__ = [
    "HYBRID_METHODS",
    "INVERTERS",
    "METHODS",
    "REFINERS",
    "START_METHODS",
    "DIPConfig",
    "DIPInverter",
    "DecoderConfig",
    "DecoderInverter",
    "DiffusionConfig",
    "DiffusionInverter",
    "GANConfig",
    "GANInverter",
    "InversionOutput",
    "Inverter",
    "InverterConfig",
    "InverterSpec",
    "MapperConfig",
    "MapperInverter",
    "OptionError",
    "PixelConfig",
    "PixelInverter",
    "RefiningInverter",
    "build_inverter",
    "inverter_spec",
    "memory_costs",
    "method_options",
    "options_for",
    "optimize",
]
