"""Plugin units through entry points, without installing a package: defenses and inverters from a module on
``sys.path`` named by fake entry points; a plugin that fails to import is named, the built-in units keep working."""

import importlib.metadata
import sys

import pytest
import torch

import diffinv.plugins
from diffinv import defenses
from diffinv.inverters import registry

PLUGIN = """
import torch
from diffinv.defenses import DefenseFamily

def _scale(features, strength, generator, straight_through):
    return features * strength

scale = DefenseFamily("scale", _scale, lambda v: v > 0, "a number > 0", "2", False)
"""


@pytest.fixture
def entry_points(monkeypatch, tmp_path):
    """``install(group, name, value)`` registers a fake entry point; the discovery caches are reset around the test."""
    (tmp_path / "fake_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = []
    monkeypatch.setattr(diffinv.plugins, "entry_points", lambda group: [p for p in points if p.group == group])

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
    with pytest.raises(
        diffinv.plugins.PluginError,
        match=r"plugin 'broken' of group 'diffinv.defenses' .*"
        r"no_such_module_xyz:family.*ModuleNotFoundError",
    ):
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


INVERTER_PLUGIN = """
from dataclasses import dataclass
from diffinv.inverters.config import option
from diffinv.inverters.pixel import PixelConfig, PixelInverter

@dataclass(frozen=True)
class DimmerConfig(PixelConfig):
    method = "dimmer"
    dim: float = option(1.0, "unit", help="scale of the images")

class Dimmer(PixelInverter):
    name = "dimmer"
    config_class = DimmerConfig
    roles = frozenset()

    def _reconstruct(self, features, layer, size, **kwargs):
        images, history, info = super()._reconstruct(features, layer, size, **kwargs)
        return images * self.config.dim, history, info

@dataclass(frozen=True)
class ClashConfig(PixelConfig):
    method = "clash"
    iterations: int = option(10, "positive_int", flag="--steps-taken", help="another flag for iterations")

class Clash(PixelInverter):
    name = "clash"
    config_class = ClashConfig
    roles = frozenset()
"""


def test_a_plugin_method_gets_its_flags_from_its_declarations(entry_points, tmp_path, capsys):
    from diffinv.cli import main
    from diffinv.cli.common import method_flags
    from diffinv.features import FeatureSet
    from diffinv.targets import TargetNetwork

    (tmp_path / "fake_inverter.py").write_text(INVERTER_PLUGIN)
    entry_points("diffinv.inverters", "dimmer", "fake_inverter:Dimmer")
    flags = method_flags()
    assert flags["dim"].flag == "--dim" and list(flags["dim"].infos) == ["dimmer"]
    assert "dimmer" in flags["iterations"].infos  # a shared option: one flag for every method that takes it
    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    assert "dimmer: scale of the images (default 1.0)" in " ".join(capsys.readouterr().out.split())

    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", weights="random:0", input_size=(32, 32))
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    FeatureSet.extract(target, images, "blocks.1").save(tmp_path / "f.safetensors")
    out = tmp_path / "out"
    assert (
        main(
            [
                "invert",
                str(tmp_path / "f.safetensors"),
                "--method",
                "dimmer",
                "--dim",
                "0.5",
                "--iterations",
                "2",
                "--weights",
                "random:0",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    from diffinv.io import load_image

    written = sorted(out.glob("*.png"))
    assert written and all(float(load_image(f).max()) <= 0.5 + 1 / 255 for f in written)  # the plugin's own option
    with pytest.raises(SystemExit) as exit_info:
        main(["invert", str(tmp_path / "f.safetensors"), "--method", "dimmer", "--dim", "2", "-o", str(out)])
    assert exit_info.value.code == 2
    assert "argument --dim: expected a number in [0, 1], got 2" in capsys.readouterr().err

    entry_points("diffinv.inverters", "clash", "fake_inverter:Clash")
    with pytest.raises(ValueError, match=r"option `iterations` of method 'clash' declares the flag --steps-taken"):
        method_flags()
