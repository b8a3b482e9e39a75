"""The example plugin ``examples/plugin`` (package ``diffinv-deepinversion``, method ``deepinversion``) installed as a
user installs it, run through every command of diffinv: invert (and a hybrid), bench (settings, resume, refusal of a
changed option, torchrun), atlas, audit (the adaptive attacker), video, the app and the memory check; and a plugin
that fails to import, named while the built-in methods keep working.

The plugin must be installed (``pip install --no-deps -e examples/plugin``, as ``.ci/run`` does): without it these
tests fail, saying so."""

import importlib.metadata
import json
import threading

import pytest
import torch
from launch import run_diffinv

import diffinv.plugins
from diffinv.cli import main
from diffinv.inverters import INVERTERS, build_inverter, memory_costs, registry
from diffinv.resources import ComputeShape

pytestmark = pytest.mark.usefixtures("one_thread")
INSTALL = "pip install --no-deps -e examples/plugin"


def _plugin_entry_point():
    found = [e for e in importlib.metadata.entry_points(group="diffinv.inverters") if e.name == "deepinversion"]
    if not found:
        pytest.fail(
            f"the example plugin is not installed: no entry point 'deepinversion' in group 'diffinv.inverters'. "
            f"Install it with `{INSTALL}` (.ci/run does).",
            pytrace=False,
        )
    return found[0]


@pytest.fixture(scope="module")
def plugin():
    """The plugin's module, found through its entry point (a clear failure when it is not installed)."""
    entry = _plugin_entry_point()
    assert entry.dist is not None and entry.dist.name == "diffinv-deepinversion", entry
    import diffinv_deepinversion

    return diffinv_deepinversion


# ---------------------------------------------------------------------- the unit
def test_the_plugin_is_a_registered_method(plugin):
    cls = INVERTERS["deepinversion"]
    assert cls is plugin.DeepInversionInverter and cls.name == "deepinversion"
    assert "deepinversion" in registry.INVERTER_NAMES and "dip+deepinversion" in registry.METHODS
    assert "deepinversion" in registry.REFINERS and "deepinversion" not in registry.START_METHODS
    config = cls.config_class()
    assert config.accepts_feature_transform and config.accepts_init and config.streams_images and config.temporal
    assert config.bn_weight is None and config.parameterization == "fourier"
    assert cls.option_infos()["bn_weight"].flag_for("bn_weight") == "--bn-weight"
    with pytest.raises(
        ValueError,
        match=r"method 'deepinversion': `bn_weight` must be a finite number >= 0 or None, "
        r"got -1",
    ):
        build_inverter("deepinversion", None, bn_weight=-1.0)


def test_the_prior_is_per_image_and_on_the_layers_up_to_the_layer(plugin, random_lite0_blocks2_32px, photos_64px):
    images = torch.nn.functional.interpolate(photos_64px, size=(32, 32), mode="bilinear", antialias=True)
    shallow = plugin.StatisticsForward(random_lite0_blocks2_32px.model, "blocks.1")
    deep = plugin.StatisticsForward(random_lite0_blocks2_32px.model, "blocks.2")
    assert shallow.names[0] == "bn1" and all(n.split(".")[0] in ("bn1", "blocks") for n in shallow.names)
    assert all(n == "bn1" or n.startswith(("blocks.0.", "blocks.1.")) for n in shallow.names)
    assert deep.names[: len(shallow.names)] == shallow.names and any(n.startswith("blocks.2.") for n in deep.names)
    x = random_lite0_blocks2_32px.preprocess(images)
    features, inputs = deep(x)
    assert torch.equal(features, random_lite0_blocks2_32px.feature(images, "blocks.2")) and len(inputs) == len(
        deep.norms
    )
    loss = plugin.bn_statistics_loss(inputs, deep.norms)
    alone = plugin.bn_statistics_loss(deep(x[1:2])[1], deep.norms)
    assert loss.shape == (4,) and torch.allclose(alone, loss[1:2], rtol=1e-4)  # each image's prior is its own
    # the paper's formula, written out for one layer
    first, norm = inputs[0][2], deep.norms[0]
    mean, var = first.mean((1, 2)), first.var((1, 2), unbiased=False)
    expected = (mean - norm.running_mean).norm() + (var - norm.running_var).norm()
    assert torch.allclose(plugin.bn_statistics_loss(inputs[:1], deep.norms[:1])[2], expected, rtol=1e-4)
    with pytest.raises(ValueError, match="no BatchNorm layer runs before `layer` 'conv_stem'"):
        plugin.StatisticsForward(random_lite0_blocks2_32px.model, "conv_stem")


def test_weights_per_stride_and_the_loss_goes_down(plugin, random_lite0_blocks2_32px, photos_64px):
    assert (
        plugin.bn_weight_for_stride(4) == plugin.BN_WEIGHTS[4]
        and plugin.bn_weight_for_stride(64) == plugin.BN_WEIGHTS[32]
    )
    images = torch.nn.functional.interpolate(photos_64px[:2], size=(32, 32), mode="bilinear", antialias=True)
    features = random_lite0_blocks2_32px.feature(images, "blocks.2")
    out = build_inverter("deepinversion", random_lite0_blocks2_32px, iterations=8, bn_weight=1e-3)(
        features, (32, 32), generator=torch.Generator().manual_seed(0), progress=False
    )
    assert out.images.shape == (2, 3, 32, 32) and out.info["bn_weight"] == 1e-3 and out.info["bn_layers"] > 5
    assert (out.loss_history[-1] < out.loss_history[0]).all()
    default = build_inverter("deepinversion", random_lite0_blocks2_32px, iterations=2)(
        features, (32, 32), progress=False
    )
    assert default.info["bn_weight"] == plugin.bn_weight_for_stride(32 / features.shape[-1])
    # weight 0 is the plain Fourier pixel inversion, bit for bit
    plain = build_inverter("pixel", random_lite0_blocks2_32px, iterations=4)(
        features, (32, 32), generator=torch.Generator().manual_seed(1), progress=False
    )
    zero = build_inverter("deepinversion", random_lite0_blocks2_32px, iterations=4, bn_weight=0.0)(
        features, (32, 32), generator=torch.Generator().manual_seed(1), progress=False
    )
    assert torch.equal(plain.images, zero.images)


def test_three_threads_share_one_inverter(plugin, random_lite0_blocks2_32px, photos_64px):
    """No state shared between calls: three threads on one inverter (and one target) give the images of one."""
    images = torch.nn.functional.interpolate(photos_64px[:3], size=(32, 32), mode="bilinear", antialias=True)
    features = [random_lite0_blocks2_32px.feature(images[i : i + 1]) for i in range(3)]
    inverter = build_inverter("deepinversion", random_lite0_blocks2_32px, iterations=3, bn_weight=1e-3)

    def run(i):
        return inverter(features[i], (32, 32), generator=torch.Generator().manual_seed(i), progress=False).images

    alone = [run(i) for i in range(3)]
    together = [None] * 3
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(i))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


# ---------------------------------------------------------------------- the commands
def test_invert_and_a_hybrid(plugin, tmp_path, six_photos_48px_dir, capsys):
    feats = tmp_path / "f.safetensors"
    assert (
        main(
            [
                "extract",
                str(six_photos_48px_dir / "img0.png"),
                str(six_photos_48px_dir / "img1.png"),
                "--weights",
                "random:0",
                "--layer",
                "blocks.1",
                "--size",
                "32",
                "--out",
                str(feats),
            ]
        )
        == 0
    )
    out = tmp_path / "inv"
    assert (
        main(
            [
                "invert",
                str(feats),
                "--method",
                "deepinversion",
                "--bn-weight",
                "0.001",
                "--iterations",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert len(list(out.glob("*.png"))) >= 2
    assert '"method": "deepinversion"' in capsys.readouterr().out
    hybrid = tmp_path / "hyb"
    assert (
        main(
            [
                "invert",
                str(feats),
                "--method",
                "deepinversion",
                "--init",
                "dip",
                "--iterations",
                "3",
                "--out",
                str(hybrid),
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert len(list(hybrid.glob("*.png"))) >= 2
    printed = capsys.readouterr().out
    assert '"method": "deepinversion"' in printed and '"hybrid": true' in printed  # dip+deepinversion


BENCH = [
    "bench",
    "--weights",
    "random:0",
    "--size",
    "32",
    "--num-images",
    "2",
    "--layers",
    "blocks.1",
    "--methods",
    "deepinversion",
    "--iterations",
    "3",
    "--batch-size",
    "1",
    "--workers",
    "1",
    "--seeds",
    "0",
    "--judge",
    "none",
]


def test_bench_settings_resume_and_a_changed_option_refused(plugin, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [*BENCH, "--bn-weight", "0.001", "--out", str(out)]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert '"bn_weight": 0.001' in json.dumps(manifest)  # the method's option is one of the run's settings
    records = (out / "records.jsonl").read_text()
    assert len(records.splitlines()) == 2 and '"method": "deepinversion"' in records
    capsys.readouterr()
    assert main(argv) == 0  # resumed: nothing is recomputed
    assert (out / "records.jsonl").read_text() == records
    assert main([*BENCH, "--bn-weight", "0.01", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bn_weight" in err and "diffinv bench: error:" in err, err


def test_bench_under_torchrun_gives_the_records_of_one_process(plugin, tmp_path):
    for name, processes in (("one", 1), ("two", 2)):
        result = run_diffinv(*BENCH, "--seeds", "0", "1", "--out", name, processes=processes, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    one, two = (json.loads((tmp_path / n / "results.json").read_text())["records"] for n in ("one", "two"))
    assert len(one) == len(two) == 4 and [r["method"] for r in two] == ["deepinversion"] * 4
    assert sorted((tmp_path / "two").glob("records*.jsonl"))[1].name == "records.rank1.jsonl"
    for a, b in zip(one, two):
        assert (a["layer"], a["seed"], a["image"]) == (b["layer"], b["seed"], b["image"])
        assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-6)


def test_atlas(plugin, tmp_path, six_photos_48px_dir, capsys):
    out = tmp_path / "atlas"
    code = main(
        [
            "atlas",
            "--images",
            str(six_photos_48px_dir),
            "--train-split",
            "2",
            "--weights",
            "random:0",
            "--size",
            "32",
            "--layers",
            "blocks.1",
            "--methods",
            "pixel",
            "deepinversion",
            "--iterations",
            "2",
            "--bn-weight",
            "0.001",
            "--batch-size",
            "4",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "bench" / "records.jsonl").read_text().splitlines()]
    assert sorted({r["method"] for r in records}) == ["deepinversion", "pixel"] and len(records) == 2 * 4
    assert "deepinversion" in (out / "results.md").read_text()


def test_audit_with_the_adaptive_attacker(plugin, tmp_path, capsys):
    out = tmp_path / "audit"
    code = main(
        [
            "audit",
            "--weights",
            "random:0",
            "--layer",
            "blocks.1",
            "--defenses",
            "none",
            "noise:0.5",
            "--methods",
            "deepinversion",
            "--dataset",
            "foolbox-imagenet",
            "--num-images",
            "1",
            "--size",
            "32",
            "--iterations",
            "2",
            "--bn-weight",
            "0.001",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    noisy = report["settings"][1]
    assert noisy["defense"] == "noise:0.5"
    attack = noisy["attacks"]["deepinversion"]
    assert attack["naive"] is not None and attack["adaptive"] is not None  # it optimizes through the defense


def test_video(plugin, tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(4):
            frame = torch.zeros(32, 48, 3, dtype=torch.uint8)
            frame[:, 8 * i : 8 * i + 16] = 200
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "video"
    assert (
        main(
            [
                "video",
                str(path),
                "--weights",
                "random:0",
                "--layer",
                "blocks.1",
                "--method",
                "deepinversion",
                "--iterations",
                "3",
                "--size",
                "32",
                "--frames",
                "4",
                "--window",
                "2",
                "--temporal-weight",
                "1",
                "--bn-weight",
                "0.001",
                "--no-mp4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["frames"]) == 4 and metrics["config"]["temporal_weight"] == 1.0
    assert '"bn_weight": 0.001' in json.dumps(metrics["config"])


def test_app_lists_and_runs_it_with_its_memory_check(plugin, tmp_path):
    from diffinv.app.limits import Limits
    from diffinv.app.runner import InvertRequest, Workbench
    from diffinv.app.ui import build_app
    from diffinv.cli import USER_ERRORS

    bench = Workbench(
        user_errors=USER_ERRORS,
        work_dir=tmp_path / "app",
        limits=Limits(runs_dir=tmp_path / "runs", targets=("tf_efficientnet_lite0",)),
    )
    page = build_app(bench).get_config_file()
    menus = [c["props"] for c in page["components"] if c["props"].get("label") == "method (--method)"]
    assert menus and "deepinversion" in [c[0] if isinstance(c, (list, tuple)) else c for c in menus[0]["choices"]]
    request = InvertRequest(image="chelsea", layer="blocks.2", method="deepinversion", iterations=6, size=64)
    updates = list(bench.invert(request, bench.session("di")))
    assert len(updates) > 2 and all(len(u.images) == 2 for u in updates[:-1])  # it streams its images
    last = updates[-1]
    assert last.done and not last.error and last.message.startswith("done: deepinversion at blocks.2"), last.message
    costs = memory_costs(["deepinversion"], {"bn_weight": 0.001})
    assert set(costs["deepinversion"](ComputeShape(pixels=64 * 64, batch=1))) == {
        "pixel optimizer state",
        "bn statistics",
    }


def test_the_memory_check_refuses_what_does_not_fit(plugin, tmp_path, capsys):
    code = main(
        [
            "bench",
            "--weights",
            "random:0",
            "--size",
            "4096",
            "--num-images",
            "1",
            "--layers",
            "blocks.1",
            "--methods",
            "deepinversion",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "big"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "memory" in err and "bn statistics" in err, err


# ---------------------------------------------------------------------- a plugin that fails to import
def test_a_plugin_that_fails_to_import_is_named_and_the_built_in_methods_keep_working(
    monkeypatch, random_lite0_blocks2_32px
):
    broken = importlib.metadata.EntryPoint("brokenmethod", "diffinv_no_such_plugin_xyz:Method", "diffinv.inverters")

    def reset():
        diffinv.plugins._discover.cache_clear()
        registry.INVERTERS.__dict__.pop("_units", None)
        for names in (
            registry.START_METHODS,
            registry.REFINERS,
            registry.HYBRID_METHODS,
            registry.METHODS,
            registry.INVERTER_NAMES,
        ):
            names.__dict__.pop("_values", None)

    monkeypatch.setattr(
        diffinv.plugins, "entry_points", lambda group: [broken] if group == "diffinv.inverters" else []
    )
    reset()
    try:
        with pytest.raises(
            diffinv.plugins.PluginError,
            match=r"plugin 'brokenmethod' of group 'diffinv.inverters' "
            r"\(package diffinv_no_such_plugin_xyz, "
            r"diffinv_no_such_plugin_xyz:Method\) failed to load: "
            r"ModuleNotFoundError",
        ):
            INVERTERS["brokenmethod"]
        assert {"pixel", "dip", "decoder"} <= set(INVERTERS) and "brokenmethod" not in INVERTERS
        features = random_lite0_blocks2_32px.feature(
            torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        )
        out = build_inverter("pixel", random_lite0_blocks2_32px, iterations=2)(features, (32, 32), progress=False)
        assert out.images.shape == (1, 3, 32, 32)
    finally:
        monkeypatch.undo()
        reset()
    assert "deepinversion" in INVERTERS or not importlib.metadata.entry_points(group="diffinv.inverters")
