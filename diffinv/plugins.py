"""Plugins: units (inverters, defenses, target loaders) that other packages add through entry points.

A package declares its units in its ``pyproject.toml``; each entry point names one unit::

    [project.entry-points."diffinv.inverters"]
    deepinversion = "diffinv_deepinversion:DeepInversionInverter"

The groups are :data:`GROUPS`. Each is read once, on first use (:func:`load_units`). A unit that
fails to import does not stop the others: the error is kept (:func:`plugin_errors`) and raised,
naming the entry point and its package, only when that unit is asked for by name
(:class:`PluginError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cache, cached_property
from importlib.metadata import EntryPoint, entry_points

__all__ = ["GROUPS", "PluginError", "Units", "load_units", "plugin_errors"]

GROUPS = ("diffinv.inverters", "diffinv.defenses", "diffinv.targets")


class PluginError(ImportError):
    """A plugin unit that could not be loaded: names the entry point, its package and the cause."""


def _package(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else entry.value.split(":")[0]


@cache
def _discover(group: str) -> tuple[dict[str, object], dict[str, PluginError]]:
    if group not in GROUPS:
        raise ValueError(f"`group` must be one of {', '.join(GROUPS)}, got {group!r}.")
    units, errors = {}, {}
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            units[entry.name] = entry.load()
        except Exception as error:  # noqa: BLE001 - any failure of a third-party import is reported, not raised
            errors[entry.name] = PluginError(
                f"plugin {entry.name!r} of group {group!r} (package {_package(entry)}, {entry.value}) failed to "
                f"load: {type(error).__name__}: {error}. The built-in units still work; fix or uninstall that package."
            )
    return units, errors


def load_units(group: str) -> dict[str, object]:
    """The units that installed packages add to ``group`` (one of :data:`GROUPS`), by entry-point name;
    those that failed to import are left out (see :func:`plugin_errors`)."""
    return dict(_discover(group)[0])


def plugin_errors(group: str) -> dict[str, PluginError]:
    """The entry points of ``group`` that failed to load, by name, each with its :class:`PluginError`."""
    return dict(_discover(group)[1])


class Units(Mapping):
    """Name -> unit: ``built_in`` (by name), then the plugins of ``group``, read on first use.

    A plugin that is not a unit of the kind (``valid(name, unit)`` false, e.g. the wrong class or a name that is
    not its own) or that takes a built-in name is refused when the group is first read; one that failed to import
    raises its :class:`PluginError` when it is asked for by name, and the others keep working.

    Args:
        group: one of :data:`GROUPS`.
        built_in: the package's own units, by name.
        valid: whether a plugin's entry point ``name`` holds a proper unit.
        what: the kind of unit the group expects, for the error (e.g. "an Inverter subclass named NAME").
    """

    def __init__(
        self, group: str, built_in: Callable[[], Mapping[str, object]], valid: Callable[[str, object], bool], what: str
    ):
        self.group, self._built_in, self._valid, self._what = group, built_in, valid, what

    @cached_property
    def _units(self) -> dict[str, object]:
        units = dict(self._built_in())
        for name, unit in load_units(self.group).items():
            if name in units or not self._valid(name, unit):
                raise PluginError(
                    f"plugin {name!r} of group {self.group!r} must be {self._what.replace('NAME', repr(name))}"
                    f", not a built-in one; got {unit!r}."
                )
            units[name] = unit
        return units

    def __getitem__(self, name: str):
        if name not in self._units and name in plugin_errors(self.group):
            raise plugin_errors(self.group)[name]
        return self._units[name]

    def __contains__(self, name) -> bool:
        return name in self._units

    def __iter__(self) -> Iterator[str]:
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)
