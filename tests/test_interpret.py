"""diffinv.interpret: objectives, parameterizations, transforms, feature visualization, per-channel
inversion with heat maps, dead-filter diagnostics, and the three commands (visualize, channels,
dead-filters) with their bad inputs."""

import json

import pytest
import torch
from torch import nn

from diffinv.cli import main
from diffinv.interpret import (
    channel,
    channel_activations,
    dead_filter_report,
    heat_maps,
    invert_channels,
    keep_channels,
    layer_norm,
    local_energy,
    neuron,
    pearson,
    standard_transforms,
    top_channels,
    visualize,
)
from diffinv.interpret.dead_filters import ChannelStatistics
from diffinv.interpret.param import dip_image, fourier_image
from diffinv.inverters import PixelInverter
from diffinv.io import save_image
from diffinv.targets import TargetNetwork

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(seed=0, killed=()):
    """conv-BN-ReLU6 (8 channels, ``killed`` ones dead: BN weight 0, bias -1) -> conv -> pool -> linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.1)
        net[1].running_var.uniform_(0.5, 1.5)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_(0, 0.1)
        for c in killed:
            net[1].weight[c], net[1].bias[c] = 0.0, -1.0
    return net


def tiny_target(killed=(), layers=("2", "3")):
    return TargetNetwork(tiny_net(killed=killed), list(layers), input_size=(32, 32))


# ---------------------------------------------------------------------- objectives
def test_objective_arithmetic():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    feats = {"a": f, "b": 2 * f}
    c1, c0 = channel("a", 1), channel("a", 0)
    assert torch.allclose(c1(feats), f[:, 1].mean((1, 2)))
    assert torch.allclose((c1 - c0)(feats), torch.full((2,), 4.0))
    assert torch.allclose((2 * c1 + 1)(feats), 2 * f[:, 1].mean((1, 2)) + 1)
    assert torch.allclose((c1 / 2 - 3 * channel("b", 1))(feats), -5.5 * f[:, 1].mean((1, 2)))
    assert torch.allclose(channel("a", [0, 2])(feats), torch.stack([f[0, 0].mean(), f[1, 2].mean()]))
    assert torch.allclose(neuron("a", 2, x=1, y=0)(feats), f[:, 2, 0, 1])
    assert torch.allclose(layer_norm("b")(feats), (2 * f).pow(2).flatten(1).mean(1))
    assert (c1 + channel("b", 0) - layer_norm("a")).layers == ("a", "b")
    with pytest.raises(ValueError, match="layer 'a' has 3 channels"):
        channel("a", 3)(feats)
    with pytest.raises(ValueError, match="batch of 2"):
        channel("a", [0, 1, 2])(feats)
    with pytest.raises(ValueError, match="does not output a feature map"):
        channel("v", 0)({"v": torch.zeros(2, 5)})


# ---------------------------------------------------------------------- parameterizations, transforms
def test_fourier_parameterization_gives_real_images_in_range_and_gradients():
    params, image_fn = fourier_image(2, (24, 30), generator=torch.Generator().manual_seed(0))
    images = image_fn()
    assert images.shape == (2, 3, 24, 30) and images.dtype == torch.float32 and not images.is_complex()
    assert images.min() > 0 and images.max() < 1 and (images - 0.5).abs().max() < 0.2  # starts near grey
    assert params[0].shape == (2, 3, 24, 16, 2)
    images[:, 0].mean().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    # the colour decorrelation mixes channels: a change of one colour channel moves all three
    with torch.no_grad():
        params[0].zero_()
        params[0][:, 0, 0, 0, 0] = 10.0
    rgb = image_fn()[0].mean((1, 2))
    assert (rgb - 0.5).abs().min() > 0.01


def test_transforms_are_differentiable_and_seeded():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    t = standard_transforms(32)
    y1, y2 = t(x, torch.Generator().manual_seed(3)), t(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and y1.shape[:2] == (2, 3)
    y1.sum().backward()
    assert x.grad.abs().sum() > 0


def test_dip_parameterization_checks_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        dip_image(1, (24, 24))


# ---------------------------------------------------------------------- visualization
@pytest.mark.parametrize("method", ["pixel", "dip"])
def test_activation_rises_under_optimization(method):
    target = tiny_target()
    objective = channel("3", [1, 4])
    g = torch.Generator().manual_seed(0)
    out = visualize(
        target, objective, 2, size=(32, 32), method=method, iterations=25, transforms=None, generator=g, progress=False
    )
    assert out.images.shape == (2, 3, 32, 32) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.history.shape == (25, 2)
    assert (out.values > out.history[0] + 0.05).all(), (out.values, out.history[0])
    with torch.no_grad():
        assert torch.allclose(out.values, objective(target.forward(out.images, ["3"])), atol=1e-5)


def test_visualize_through_a_diffusion_sampler():
    from diffinv.pipelines import load_pipeline

    pipe = load_pipeline("tiny")  # random weights, 32 px, VAE factor 2
    pipe.set_progress_bar_config(disable=True)
    out = visualize(
        tiny_target(),
        channel("3", [2, 3]),
        2,
        size=(32, 32),
        method="diffusion",
        pipeline=pipe,
        iterations=6,
        learning_rate=0.5,
        transforms=None,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert out.images.shape == (2, 3, 32, 32) and out.info["param"] == "diffusion"
    assert torch.allclose(out.values, out.history.max(0).values, atol=1e-3)  # the best iterate, rendered again
    assert (out.values > out.history[0]).all()


def test_visualize_with_transforms_and_plain_pixels():
    target = tiny_target()
    out = visualize(
        target,
        channel("3", 0) + 0.1 * layer_norm("2"),
        1,
        size=(32, 32),
        param="pixel",
        iterations=15,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    assert out.values[0] > out.history[0, 0]
    with pytest.raises(ValueError, match="has 6 channels"):
        visualize(target, channel("3", 6), 1, size=(32, 32), iterations=1, progress=False)
    with pytest.raises(ValueError, match="does not output a feature map"):
        visualize(target, channel("6", 0), 1, size=(32, 32), iterations=1, progress=False)
    with pytest.raises(ValueError, match="needs `pipeline=`"):
        visualize(target, channel("3", 0), 1, method="diffusion", iterations=1, progress=False)


# ---------------------------------------------------------------------- channels
def test_channel_statistics_top_and_heat_maps():
    target = tiny_target()
    images = torch.rand(5, 3, 32, 32)
    acts = channel_activations(target, "3", images, batch_size=2)
    assert acts.shape == (5, 6)
    assert torch.allclose(acts, target.feature(images, "3").mean((2, 3)), atol=1e-5)
    assert top_channels(acts, 2) == acts.mean(0).topk(2).indices.tolist()
    with pytest.raises(ValueError, match="top 7 of 6"):
        top_channels(acts, 7)
    f = torch.randn(1, 6, 4, 4)
    kept = keep_channels(f, [2])
    assert torch.equal(kept[0, 2], f[0, 2]) and kept[0, [0, 1, 3, 4, 5]].abs().sum() == 0
    f = torch.zeros(1, 2, 4, 4)
    f[0, 0, 0, 0] = 3.0  # fires in the top-left corner only
    heat = heat_maps(f, [0, 1], (16, 16))
    assert heat.shape == (2, 16, 16) and heat[0].max() == 1 and heat[1].abs().sum() == 0
    assert heat[0, :4, :4].mean() > heat[0, 8:, 8:].mean()
    a = torch.rand(3, 10, 10)
    assert torch.allclose(pearson(a, 2 * a + 1), torch.ones(3), atol=1e-5)
    assert torch.allclose(pearson(a, -a), -torch.ones(3), atol=1e-5)
    flat = torch.full((1, 3, 16, 16), 0.5)
    assert local_energy(flat).abs().max() == 0 and local_energy(flat, reference="grey").abs().max() == 0


def test_invert_channels_with_an_inverter():
    target = tiny_target(layers=("3",))
    image = torch.rand(3, 32, 32)
    result = invert_channels(PixelInverter(target, iterations=4), image, "3", [0, 5], progress=False)
    assert result.images.shape == (2, 3, 32, 32) and result.heat_maps.shape == (2, 32, 32)
    assert result.overlays.shape == (2, 3, 32, 32) and result.channels == [0, 5]
    with pytest.raises(ValueError, match="layer '3' has 6 channels"):
        invert_channels(PixelInverter(target, iterations=1), image, "3", [6], progress=False)


# ---------------------------------------------------------------------- dead filters
def test_dead_filter_report_lists_exactly_the_killed_channels(tmp_path):
    killed = [1, 6]
    target = tiny_target(killed=killed)
    images = torch.rand(7, 3, 32, 32)
    report = dead_filter_report(target, ["2", "3"], (images[i : i + 3] for i in range(0, 7, 3)), progress=False)
    assert report.num_images == 7
    assert report.layers["2"]["dead"] == killed and report.layers["2"]["constant"] == killed
    assert report.layers["2"]["num_channels"] == 8
    assert report.layers["3"]["num_channels"] == 6
    healthy = dead_filter_report(tiny_target(), ["2"], [images], progress=False)
    assert healthy.layers["2"]["dead"] == [] and healthy.layers["2"]["constant"] == []
    paths = report.write(tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "histograms.png"] and all(
        p.is_file() for p in paths
    )
    assert json.loads(paths[0].read_text())["layers"]["2"]["dead"] == killed
    assert "| 2 | 8 | 2 |" in paths[1].read_text()
    with pytest.raises(ValueError, match="dataset is empty"):
        dead_filter_report(target, ["2"], [], progress=False)
    with pytest.raises(ValueError, match="does not output a feature map"):
        dead_filter_report(target, ["6"], [images], progress=False)


def test_streaming_statistics_equal_those_of_all_images_at_once():
    feats = torch.randn(9, 4, 5, 5) * torch.tensor([1.0, 2.0, 0.0, 3.0]).view(1, 4, 1, 1) + 0.5
    streamed, whole = ChannelStatistics(eps=0.6), ChannelStatistics(eps=0.6)
    for i in range(0, 9, 2):
        streamed.update(feats[i : i + 2])
    whole.update(feats)
    ref_var = feats.double().transpose(0, 1).flatten(1).var(1, unbiased=False)
    assert torch.allclose(streamed.variance, ref_var) and torch.allclose(whole.variance, ref_var)
    assert torch.equal(streamed.max, whole.max) and torch.equal(streamed.active, whole.active)
    assert streamed.images == 9 and streamed.active[2] == 0  # the constant channel (0.5) never exceeds eps 0.6


# ---------------------------------------------------------------------- the commands
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


COMMON = ("--target", "tf_efficientnet_lite0", "--weights", "random:0", "--size", "32", "--device", "cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory, photos_64px):
    return save_image(photos_64px[0], tmp_path_factory.mktemp("photo") / "cat.png")


def test_cli_visualize_channels_and_dead_filters(tmp_path, capsys, photo):
    vis = tmp_path / "vis"
    code, out, err = run_cli(
        capsys,
        "visualize",
        *COMMON,
        "--layer",
        "blocks.2",
        "--top",
        "2",
        "--iterations",
        "3",
        "--dataset",
        "skimage",
        "--num-images",
        "3",
        "--out",
        vis,
    )
    assert code == 0, err
    results = json.loads((vis / "results.json").read_text())
    assert len(results["records"]) == 2 and results["settings"]["natural_images"]["count"] == 3
    assert {"reached", "natural_max", "ratio"} <= set(results["records"][0])
    assert (vis / "grid.png").is_file() and "max over natural images" in (vis / "results.md").read_text()
    ch = tmp_path / "ch"
    code, out, err = run_cli(
        capsys,
        "channels",
        photo,
        *COMMON,
        "--layer",
        "blocks.2",
        "--channels",
        "3",
        "7",
        "--method",
        "pixel",
        "--iterations",
        "3",
        "--out",
        ch,
    )
    assert code == 0, err
    results = json.loads((ch / "results.json").read_text())
    assert [r["channel"] for r in results["records"]] == [3, 7]
    assert (ch / "channels.png").is_file() and (ch / "heatmaps" / "channel_0003.png").is_file()
    dead = tmp_path / "dead"
    copy = tmp_path / "copy.png"  # a second image (a file given twice is refused)
    copy.write_bytes(photo.read_bytes())
    code, out, err = run_cli(
        capsys,
        "dead-filters",
        *COMMON,
        "--layers",
        "blocks.1.0.bn1",
        "blocks.2",
        "--images",
        photo,
        copy,
        "--batch-size",
        "1",
        "--out",
        dead,
    )
    assert code == 0, err
    report = json.loads((dead / "report.json").read_text())
    assert report["num_images"] == 2 and report["layers"]["blocks.2"]["num_channels"] == 40
    assert (dead / "histograms.png").is_file() and "| blocks.1.0.bn1 | 96 |" in (dead / "report.md").read_text()


def test_cli_bad_inputs_fail_before_work(tmp_path, capsys, photo):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    cases = [
        (("visualize", *COMMON, "--layer", "blocks.2", "--channels", "3", "40", "--out", out), "has 40 channels"),
        (("visualize", *COMMON, "--layer", "classifier", "--top", "2", "--out", out), "does not output a feature map"),
        (("visualize", *COMMON, "--layer", "blocks.2", "--top", "41", "--out", out), "only 40 channels"),
        (
            ("visualize", *COMMON, "--layer", "blocks.2", "--top", "2", "--images", empty, "--out", out),
            "no image files",
        ),
        (
            ("visualize", *COMMON, "--layer", "blocks.2", "--top", "1", "--method", "diffusion", "--out", out),
            "--model",
        ),
        (("channels", photo, *COMMON, "--layer", "blocks.2", "--channels", "99", "--out", out), "has 40 channels"),
        (
            ("channels", photo, *COMMON, "--layer", "global_pool", "--top", "1", "--out", out),
            "does not output a feature map",
        ),
        (("dead-filters", *COMMON, "--layers", "blocks.2", "--images", empty, "--out", out), "no image files"),
        (
            ("dead-filters", *COMMON, "--layers", "classifier", "--images", photo, "--out", out),
            "does not output a feature map",
        ),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and f"diffinv {argv[0]}: error:" in err and needle in err, (argv, err)
        assert not out.exists(), argv
