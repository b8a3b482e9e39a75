"""Inverters: one file per method, one result type (:class:`InversionOutput`)."""

from .base import InversionOutput, Inverter, optimize, resolve_features
from .dip import DIPInverter
from .pixel import PixelInverter

INVERTERS = {"pixel": PixelInverter, "dip": DIPInverter}

__all__ = ["INVERTERS", "DIPInverter", "InversionOutput", "Inverter", "PixelInverter", "optimize", "resolve_features"]
