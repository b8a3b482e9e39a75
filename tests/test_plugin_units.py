"""Plugin units through entry points, without installing a package: defenses and inverters from a module on
``sys.path`` named by fake entry points; a plugin that fails to import is named, the built-in units keep working."""

import importlib.metadata
import sys

import pytest
import torch

import diffinv.plugins
from diffinv import defenses
from diffinv.inverters import registry

PLUGIN = '''
import torch
from diffinv.defenses import DefenseFamily

def _scale(features, strength, generator, straight_through):
    return features * strength

scale = DefenseFamily("scale", _scale, lambda v: v > 0, "a number > 0", "2", False)
'''


@pytest.fixture
def entry_points(monkeypatch, tmp_path):
    """``install(group, name, value)`` registers a fake entry point; the discovery caches are reset around the test."""
    (tmp_path / "fake_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = []
    monkeypatch.setattr(diffinv.plugins, "entry_points",
                        lambda group: [p for p in points if p.group == group])

    def reset():
        diffinv.plugins._discover.cache_clear()
        for mapping in (defenses.DEFENSES, registry.INVERTERS):
            mapping.__dict__.pop("_units", None)

    def install(group, name, value):
        points.append(importlib.metadata.EntryPoint(name, value, group))
        reset()

    yield install
    reset()
    sys.modules.pop("fake_plugin", None)


def test_a_defense_plugin_is_a_defense(entry_points):
    entry_points("diffinv.defenses", "scale", "fake_plugin:scale")
    defense = defenses.parse_defense("scale:3+noise:0")
    features = torch.ones(2, 4, 3, 3)
    assert torch.equal(defense(features), 3 * features) and defense.spec == "scale:3+noise:0"
    assert "scale" in defenses.DEFENSES and not defenses.parse_defense("scale:3").random and defense.random
    with pytest.raises(ValueError, match=r"the strength of 'scale' must be a number > 0, got '-1'"):
        defenses.parse_defense("scale:-1")
    attack = defense.attacker_transform(defense(features))  # no support declared: applied as the deployment does
    assert torch.equal(attack(features), 3 * features)


def test_a_broken_plugin_is_named_and_the_built_in_units_keep_working(entry_points):
    entry_points("diffinv.defenses", "broken", "no_such_module_xyz:family")
    entry_points("diffinv.inverters", "broken", "no_such_module_xyz:Inverter")
    with pytest.raises(diffinv.plugins.PluginError, match=r"plugin 'broken' of group 'diffinv.defenses' .*"
                                                          r"no_such_module_xyz:family.*ModuleNotFoundError"):
        defenses.parse_defense("broken:1")
    with pytest.raises(diffinv.plugins.PluginError, match=r"plugin 'broken' of group 'diffinv.inverters'"):
        registry.INVERTERS["broken"]
    assert defenses.parse_defense("noise:0.1").spec == "noise:0.1"
    assert {"pixel", "dip", "diffusion"} <= set(registry.INVERTERS) and "broken" not in registry.INVERTERS
    assert "broken" in diffinv.plugins.plugin_errors("diffinv.inverters")


def test_a_plugin_that_is_not_a_unit_is_refused(entry_points):
    entry_points("diffinv.defenses", "noise", "fake_plugin:scale")  # claims a built-in name, and is named otherwise
    with pytest.raises(diffinv.plugins.PluginError, match="must be a DefenseFamily named 'noise'"):
        defenses.parse_defense("noise:0.1")
