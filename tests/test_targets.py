import functools

import pytest
import torch
from nets import SkipNet
from threads import run_in_threads
from torch import nn

from diffinv.targets import TargetNetwork, WeightsNotFoundError


def test_efficientnet_lite0_real_weights_classify_photos(lite0_64px, photos_224px):
    # chelsea is a cat (285, Egyptian cat), coffee an espresso (967): the weights are real.
    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.6")
    assert target.has_classifier and len(target.categories) == 1000
    pred = target.predict(photos_224px[:2])
    assert pred.tolist() == [285, 967]
    assert target.class_name(285) == "Egyptian cat"


def test_feature_shapes_and_early_stop(lite0_64px):
    assert lite0_64px.feature_shape("blocks.1", (64, 64)) == (24, 16, 16)
    assert lite0_64px.feature_shape("blocks.6", (64, 64)) == (320, 2, 2)
    feats = lite0_64px.forward(torch.rand(2, 3, 64, 64), layers=["blocks.1", "blocks.6"])
    assert feats["blocks.1"].shape == (2, 24, 16, 16) and feats["blocks.6"].shape == (2, 320, 2, 2)


def test_gradient_flows_to_pixels(lite0_64px):
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lite0_64px.feature(x, "blocks.2").pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in lite0_64px.parameters())


def test_resize_to_input_size():
    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", weights=None, input_size=(64, 64))
    a = target.feature(torch.rand(1, 3, 96, 96))
    assert a.shape == (1, 40, 8, 8)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"`layer` 'layer9' is not a module.*Valid layer names are: .*blocks\.1"):
        TargetNetwork.from_name("tf_efficientnet_lite0", "layer9", weights=None)


def test_resnet50_without_offline_weights_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"weights=None"):
        TargetNetwork.from_name("resnet50", "layer3")
    random = TargetNetwork.from_name("resnet50", "layer3", weights=None, input_size=(64, 64))
    assert random.feature_shape("layer3", (64, 64)) == (1024, 4, 4)


def test_resnet_loads_local_state_dict(tmp_path):
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(model.state_dict(), path)
    target = TargetNetwork.from_name("resnet50", "layer1", weights=str(path))
    assert torch.equal(target.model.conv1.weight, model.conv1.weight)


def test_any_module_and_timm_name():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))
    target = TargetNetwork(net, "2", input_size=None)
    assert target.feature_shape("2", (32, 32)) == (4, 16, 16)
    assert not target.has_classifier
    with pytest.raises(ValueError, match="no classifier head"):
        target.predict(torch.rand(1, 3, 32, 32))
    timm_target = TargetNetwork.from_name("resnet18", "layer2", weights=None, input_size=(64, 64))
    assert timm_target.feature_shape("layer2", (64, 64)) == (128, 8, 8)
    with pytest.raises(ValueError, match=r"neither a built-in target \(.*\) nor a timm model name"):
        TargetNetwork.from_name("not_a_model_xyz", "a", weights=None)


def test_bad_images_shape(lite0_64px):
    with pytest.raises(ValueError, match=r"`images` must be a \(N, 3, H, W\)"):
        lite0_64px.feature(torch.rand(3, 64, 64), "blocks.1")


def test_input_size_per_call_leaves_the_target_as_it_is(lite0_64px, photos_64px):
    """`input_size=` resizes for one call (what the pipeline passes for features made at another size)."""
    images = photos_64px[:2]  # 64x64
    small = torch.nn.functional.interpolate(
        images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )
    per_call = lite0_64px.feature(images, "blocks.2", input_size=(32, 32))
    assert torch.equal(per_call, lite0_64px.feature(small, "blocks.2", input_size=(32, 32)))
    assert per_call.shape == (2, 40, 4, 4) and lite0_64px.input_size == (64, 64)
    assert lite0_64px.feature_shape("blocks.2", (96, 96), input_size=(32, 32)) == (40, 4, 4)
    assert lite0_64px.feature(images, "blocks.2").shape == (2, 40, 8, 8)


def test_concurrent_forward_passes_of_one_target(lite0_64px, photos_64px):
    """The layer hooks of one thread's forward pass are invisible to another thread's (a shared target)."""
    jobs = {
        "blocks.1 at 64": dict(layers=["blocks.1"]),
        "blocks.6 at 32": dict(layers=["blocks.6"], input_size=(32, 32)),
        "both": dict(layers=["blocks.2", "blocks.4"]),
    }
    images = photos_64px[:2]
    single = {name: lite0_64px.forward(images, **kwargs) for name, kwargs in jobs.items()}
    results = run_in_threads(
        {name: functools.partial(lite0_64px.forward, images, **kwargs) for name, kwargs in jobs.items()}, repeat=8
    )
    for name, outs in results.items():
        for out in outs:
            assert out.keys() == single[name].keys()
            assert all(torch.equal(out[k], single[name][k]) for k in out), name


def test_running_the_network_from_a_layer(lite0_64px, photos_64px):
    """One split (`split_logits`, checked by `check_split`) serves the automatic class and the defenses."""
    images = photos_64px
    clean = lite0_64px.feature(images, "blocks.6")
    lite0_64px.check_split("blocks.6", images, clean)
    assert torch.allclose(
        lite0_64px.split_logits("blocks.6", clean, torch.zeros_like(images)), lite0_64px.logits(images), atol=1e-4
    )
    assert torch.equal(lite0_64px.classify_features(clean, "blocks.6", (64, 64)), lite0_64px.predict(images))
    with pytest.raises(
        ValueError,
        match=r"layer 'blocks.6' outputs \(4, 320, 2, 2\), not one tensor of the "
        r"features' shape \(4, 320, 3, 3\)",
    ):
        lite0_64px.split_logits("blocks.6", torch.zeros(4, 320, 3, 3), images)


# ---------------------------------------------------------------------- target loaders: units and plugins
_PLUGIN = '''
import torch
from torch import nn

from diffinv.targets import TargetLoader, load_state_dict_into


class TinyNetLoader(TargetLoader):
    """A third-party target: a two-stage conv net."""

    kind = "tiny-plugin"
    names = ("tinynet",)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    default_layers = {"tinynet": ("stage1", "stage2")}
    atlas_layers = {"tinynet": ("stem", "stage1", "stage2")}

    def load(self, name, weights):
        model = nn.Sequential()
        model.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
        model.add_module("stage1", nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()))
        model.add_module("stage2", nn.Conv2d(6, 8, 3, stride=2, padding=1))
        if weights not in (None, "default"):
            load_state_dict_into(model, weights, name)
        return model
'''


@pytest.fixture
def target_plugins(tmp_path, monkeypatch):
    """Installs fake entry points of group `diffinv.targets`: a working loader and one whose import fails."""
    from importlib.metadata import EntryPoint

    import diffinv.plugins

    (tmp_path / "tinynet_plugin.py").write_text(_PLUGIN)
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs the package frobnicate')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = [
        EntryPoint("tinynet", "tinynet_plugin:TinyNetLoader", "diffinv.targets"),
        EntryPoint("brokennet", "broken_plugin:Loader", "diffinv.targets"),
        EntryPoint("notaloader", "tinynet_plugin:nn", "diffinv.targets"),
    ]
    monkeypatch.setattr(diffinv.plugins, "entry_points", lambda group=None: [e for e in entries if e.group == group])
    diffinv.plugins._discover.cache_clear()
    yield
    diffinv.plugins._discover.cache_clear()


def test_target_plugin_is_a_target_like_the_built_in_ones(target_plugins, tmp_path):
    from diffinv.targets import ATLAS_LAYERS, DEFAULT_LAYERS, available_targets, target_loader

    target = TargetNetwork.from_name("tinynet", weights="random:0", input_size=(32, 32))
    assert target.layers == ["stage2"] and torch.equal(target.mean.flatten(), torch.tensor([0.5] * 3))
    assert target.feature_shape("stage1", (32, 32)) == (6, 16, 16)
    assert "tinynet" in available_targets() and available_targets()[-1] == "<any timm model name>"
    assert DEFAULT_LAYERS["tinynet"] == ("stage1", "stage2") and ATLAS_LAYERS["tinynet"][0] == "stem"
    assert target_loader("tinynet").kind == "tiny-plugin"
    # its weights: a state-dict file, as for any target
    torch.save(target.model.state_dict(), tmp_path / "tiny.pth")
    again = TargetNetwork.from_name("tinynet", "stage1", weights=str(tmp_path / "tiny.pth"))
    assert again.weights_fingerprint() == target.weights_fingerprint()
    # the built-in loaders keep working beside a broken plugin
    assert target_loader("resnet50").kind == "torchvision" and target_loader("tf_efficientnet_lite0").kind
    assert target_loader("resnet18").kind == "timm"
    assert DEFAULT_LAYERS["tf_efficientnet_lite0"][-1] == "blocks.6"


def test_failing_target_plugin_is_named_when_asked_for(target_plugins):
    from diffinv.plugins import PluginError

    with pytest.raises(
        PluginError,
        match=r"plugin 'brokennet' of group 'diffinv.targets' \(package broken_plugin, "
        r"broken_plugin:Loader\) failed to load: ImportError: needs the package "
        r"frobnicate",
    ):
        TargetNetwork.from_name("brokennet", weights=None)
    with pytest.raises(
        PluginError,
        match=r"plugin 'notaloader' of group 'diffinv.targets' is <module 'torch.nn'.*"
        r"not a TargetLoader",
    ):
        TargetNetwork.from_name("notaloader", weights=None)
    with pytest.raises(
        ValueError,
        match=r"neither a built-in target \(resnet50, resnet101, tf_efficientnet_lite0, "
        r"tf_efficientnet_lite2, tinynet\) nor a timm model name.*A target plugin "
        r"failed to load and may provide it: plugin 'brokennet'",
    ):
        TargetNetwork.from_name("not_a_model_xyz", weights=None)


def test_no_name_branches_outside_the_loaders():
    """Nothing in diffinv.targets outside the loader units names a specific target in code."""
    import ast
    import inspect
    from pathlib import Path

    import diffinv.targets as targets

    units = (targets.TorchvisionResNets, targets.EfficientNetLitePackages, targets.TimmModels)
    modules = sorted(Path(targets.__file__).parent.glob("*.py"))  # the package's modules, the units' own included
    assert {inspect.getsourcefile(unit) for unit in units} <= {str(path) for path in modules}
    names = {"resnet50", "resnet101", "tf_efficientnet_lite0", "tf_efficientnet_lite2"}
    literals = []
    for path in modules:
        source = path.read_text()
        for unit in units:
            source = source.replace(inspect.getsource(unit), "")
        literals += [
            node.value
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and node.value in names
        ]
    assert not literals


class _ValueDependent(SkipNet):
    """A forward torch.fx cannot trace: its control flow reads a tensor's value."""

    def forward(self, x):
        x = self.stem(x)
        x = self.body(x) if x.mean() > -100 else x
        return self.head(x.mean(dim=(2, 3)))


def test_layers_of_a_forward_fx_cannot_trace(photos_64px):
    """Control flow on tensor values: the whole forward runs on per-call copies that record the layer (no hook);
    the features, the split and threads give what the plain forward gives, and the network is left as it was."""
    torch.manual_seed(0)
    net = _ValueDependent().eval()
    target = TargetNetwork(net, "body", has_classifier=True, input_size=None)
    images = photos_64px[:2]
    x = target.preprocess(images)
    with torch.no_grad():
        expected = net.body(net.stem(x))
        assert torch.equal(target.feature(images), expected)
        assert torch.equal(target.split_logits("body", expected, torch.zeros_like(images)), target.logits(images))
    outs = run_in_threads({str(i): functools.partial(target.feature, images) for i in range(3)}, repeat=2)
    assert all(torch.equal(out, expected) for results in outs.values() for out in results)
    assert type(net.body).forward is nn.Conv2d.forward and "forward" not in vars(net.body)
    assert not net.body._forward_hooks and target.model is net
