"""Inverters: one file per method behind one template (:class:`Inverter`), and the registry.

:data:`INVERTERS` maps each method name to its class, in the order the command line lists them:
white-box methods first (``diffusion``, ``pixel``, ``dip``, ``gan``), then black-box ones (``mapper``,
``decoder``).
"""

from .base import InversionOutput, Inverter, optimize
from .decoder import DecoderInverter
from .diffusion import DiffusionInverter
from .dip import DIPInverter
from .gan import GANInverter
from .mapper import MapperInverter
from .pixel import PixelInverter

INVERTERS: dict[str, type[Inverter]] = {
    cls.name: cls for cls in (DiffusionInverter, PixelInverter, DIPInverter, GANInverter, MapperInverter, DecoderInverter)
}

__all__ = [
    "INVERTERS",
    "DIPInverter",
    "DecoderInverter",
    "DiffusionInverter",
    "GANInverter",
    "InversionOutput",
    "Inverter",
    "MapperInverter",
    "PixelInverter",
    "optimize",
]
