"""The one spine: run store (manifest, resume refusal, atomic records), unique output names,
weights provenance in features, one optimization rule, one CLI vocabulary, one-way imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffinv.cli import build_parser, main
from diffinv.features import FeatureSet
from diffinv.inverters import INVERTERS, DIPInverter, PixelInverter
from diffinv.io import save_image
from diffinv.jobs.store import RunSettingsError, RunStore, unique_names
from diffinv.optimization import BestIterate, cosine_lr, run_optimization
from diffinv.targets import TargetNetwork

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- run store
def test_store_resumes_same_settings_and_refuses_others(tmp_path):
    store = RunStore(tmp_path / "run", "bench", {"iterations": 3, "size": 32, "methods": {"pixel": {"lr": 0.1}}})
    store.append({"image": "a", "psnr": 10.0})
    again = RunStore(tmp_path / "run", "bench", {"iterations": 3, "size": 32, "methods": {"pixel": {"lr": 0.1}}})
    assert again.resumed and again.records() == [{"image": "a", "psnr": 10.0}]
    with pytest.raises(RunSettingsError) as err:
        RunStore(tmp_path / "run", "bench", {"iterations": 50, "size": 64, "methods": {"pixel": {"lr": 0.2}}})
    message = str(err.value)
    for change in ("iterations: 3 there, 50 now", "size: 32 there, 64 now", "methods.pixel.lr: 0.1 there, 0.2 now"):
        assert change in message
    assert "--overwrite" in message
    assert RunStore(
        tmp_path / "run", "bench", {"iterations": 3, "size": 32, "methods": {"pixel": {"lr": 0.1}}}
    ).records()
    with pytest.raises(RunSettingsError, match="holds a 'bench' run, not a 'video' run"):
        RunStore(tmp_path / "run", "video", {})
    fresh = RunStore(tmp_path / "run", "bench", {"iterations": 50}, overwrite=True)
    assert not fresh.resumed and fresh.records() == []


def test_store_ignores_a_record_cut_short_and_refuses_unknown_runs(tmp_path):
    store = RunStore(tmp_path, "bench", {}, outputs=("results.json",))
    store.append({"k": 1})
    with open(store.records_path, "a") as f:
        f.write('{"k": 2, "psnr"')  # a crash in the middle of a write
    assert store.records() == [{"k": 1}]
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text("{}")
    with pytest.raises(RunSettingsError, match="no manifest.json"):
        RunStore(other, "bench", {}, outputs=("results.json",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        RunStore(tmp_path / "file", "bench", {})


def test_unique_names():
    assert unique_names(["d/cat.png", "d/dog.png"]) == ["cat", "dog"]
    names = unique_names(["d1/img.png", "d2/img.png", "a.png", "a.jpg", "x.png", "x.png"])
    assert len(set(names)) == 6 and names[0].startswith("img-") and names[2].startswith("a-")


# ---------------------------------------------------------------------- bench on the store
@pytest.fixture(scope="module")
def same_stem_folders(tmp_path_factory, photos_64px):
    root = tmp_path_factory.mktemp("stems")
    save_image(photos_64px[0], root / "d1" / "img.png")
    save_image(photos_64px[1], root / "d2" / "img.png")
    return root


def _bench(out, folders, *extra):
    return main(
        [
            "bench",
            "--layers",
            "blocks.1",
            "--methods",
            "pixel",
            "--images",
            *map(str, folders),
            "--size",
            "32",
            "--seeds",
            "0",
            "--iterations",
            "2",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_bench_refuses_other_settings_and_overwrite_starts_afresh(tmp_path, same_stem_folders, capsys):
    folders = [same_stem_folders / "d1", same_stem_folders / "d2"]
    out = tmp_path / "b"
    assert _bench(out, folders) == 0
    first = json.loads((out / "results.json").read_text())["records"]
    assert _bench(out, folders, "--iterations", "3") == 2
    err = capsys.readouterr().err
    assert "diffinv bench: error: cannot resume" in err and "iterations: 2 there, 3 now" in err
    assert json.loads((out / "results.json").read_text())["records"] == first  # nothing mixed in
    assert (
        main(
            [
                "bench",
                "--layers",
                "blocks.1",
                "--methods",
                "pixel",
                "--images",
                *map(str, folders),
                "--size",
                "48",
                "--seeds",
                "0",
                "--iterations",
                "2",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "image_size: [32, 32] there, [48, 48] now" in capsys.readouterr().err
    assert _bench(out, folders, "--iterations", "3", "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["methods"]["pixel"]["iterations"] == 3
    assert len(json.loads((out / "results.json").read_text())["records"]) == 2


def test_bench_gives_each_input_its_own_output(tmp_path, same_stem_folders):
    out = tmp_path / "b"
    assert _bench(out, [same_stem_folders / "d1", same_stem_folders / "d2"]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    files = [r["file"] for r in records]
    assert len(set(files)) == 2 and all((out / f).is_file() for f in files)
    assert sorted(r["image"] for r in records) == sorted(str(same_stem_folders / d / "img.png") for d in ("d1", "d2"))


def test_invert_writes_one_png_per_input_with_same_stems(tmp_path, same_stem_folders):
    feats = tmp_path / "f.safetensors"
    files = [str(same_stem_folders / "d1" / "img.png"), str(same_stem_folders / "d2" / "img.png")]
    assert main(["extract", *files, "--layer", "blocks.2", "--size", "32", "--out", str(feats)]) == 0
    assert main(["invert", str(feats), "--method", "pixel", "--iterations", "2", "--out", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(set(metrics["files"])) == 2 and metrics["sources"] == files
    assert len(list((tmp_path / "r").glob("*.png"))) == 2


# ---------------------------------------------------------------------- provenance
def test_features_record_their_weights(tmp_path, same_stem_folders, capsys):
    image = str(same_stem_folders / "d1" / "img.png")
    feats = tmp_path / "random.safetensors"
    assert (
        main(["extract", image, "--layer", "blocks.1", "--size", "32", "--weights", "random", "-o", str(feats)]) == 2
    )
    assert "needs a seed, e.g. 'random:0'" in capsys.readouterr().err
    assert (
        main(["extract", image, "--layer", "blocks.1", "--size", "32", "--weights", "random:3", "-o", str(feats)]) == 0
    )
    fs = FeatureSet.load(feats)
    assert fs.weights == "random:3" and len(fs.weights_fingerprint) == 16
    # Inverting against other weights is an error that names the weights that made the features.
    out = tmp_path / "r"
    assert (
        main(
            ["invert", str(feats), "--method", "pixel", "--iterations", "2", "--weights", "default", "--out", str(out)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weights 'random:3'" in err and fs.weights_fingerprint in err and not out.exists()
    # Without --weights, the recorded (seeded) weights are rebuilt.
    assert main(["invert", str(feats), "--method", "pixel", "--iterations", "2", "--out", str(out)]) == 0


def test_state_dict_file_weights_are_fingerprinted(tmp_path, lite0_64px, photos_64px):
    other = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", weights="random:0", input_size=(64, 64))
    path = tmp_path / "w.pth"
    torch.save(other.model.state_dict(), path)
    from_file = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", weights=str(path), input_size=(64, 64))
    assert from_file.weights_fingerprint() == other.weights_fingerprint() != lite0_64px.weights_fingerprint()
    fs = FeatureSet.extract(from_file, photos_64px[:1], "blocks.1")
    assert fs.weights == str(path.resolve())
    with pytest.raises(ValueError, match="fingerprint"):
        PixelInverter(lite0_64px, iterations=1)(fs, progress=False)
    assert fs.to_target().weights_fingerprint() == from_file.weights_fingerprint()


# ---------------------------------------------------------------------- one optimization rule
def test_best_iterate_is_kept_per_image():
    x = torch.zeros(2, 3)
    best = BestIterate([x], 2)
    best.update(torch.tensor([1.0, 5.0]), [torch.tensor([[1.0] * 3, [1.0] * 3])])
    best.update(torch.tensor([2.0, 4.0]), [torch.tensor([[2.0] * 3, [2.0] * 3])])
    best.update(torch.tensor([float("nan"), 3.0]), [torch.tensor([[3.0] * 3, [3.0] * 3])])
    best.restore([x])
    assert x[:, 0].tolist() == [1.0, 3.0] and best.loss.tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="per-image blocks"):
        BestIterate([torch.zeros(3, 2)], 2)


def test_run_optimization_schedule_skips_and_history():
    v = torch.zeros(2, 1)
    losses = iter([[1.0, 1.0], [float("nan"), 1.0], [0.5, 0.9], [0.7, 0.2]])

    def step(variables):
        per_image = torch.tensor(next(losses))
        return per_image, None if not torch.isfinite(per_image).all() else [torch.ones_like(variables[0])]

    seen = []
    result = run_optimization(
        [v],
        step,
        iterations=4,
        lr=0.1,
        num_images=2,
        progress=False,
        callback=lambda i, loss: seen.append(i) or i == 3,
    )
    assert result.skipped_steps == 1 and result.history.shape == (4, 2) and seen == [0, 1, 2, 3]
    assert torch.isnan(result.history[1, 0]) and result.best_loss.tolist() == pytest.approx([0.5, 0.2])
    assert cosine_lr(0.1, 0, 4) == pytest.approx(0.1) and cosine_lr(0.1, 2, 4) == pytest.approx(0.05)


@pytest.mark.parametrize("cls", [PixelInverter, DIPInverter])
def test_inverters_return_each_images_best_iterate(cls, lite0_64px, photos_64px):
    feats = FeatureSet.extract(lite0_64px, photos_64px[:2], "blocks.2")
    out = cls(lite0_64px, iterations=6)(feats, generator=torch.Generator().manual_seed(0), progress=False)
    best = torch.tensor(out.info["best_loss"])
    assert torch.allclose(best, out.loss_history.min(dim=0).values)


# ---------------------------------------------------------------------- CLI vocabulary, layers
def test_cli_vocabulary():
    parser = build_parser()
    helps = {name: sub.format_help() for name, sub in parser._subparsers._group_actions[0].choices.items()}
    assert set(helps) == {
        "extract",
        "invert",
        "bench",
        "demo",
        "atlas",
        "video",
        "train-decoder",
        "train-mapper",
        "visualize",
        "channels",
        "dead-filters",
        "audit",
        "app",
    }
    assert "--device" in helps.pop("app")  # the browser app: no output, target or size of its own
    for name, text in helps.items():
        assert "--out" in text and "-o" in text, name
        assert "--device" in text, name
        if name != "invert":
            assert "--target" in text and "--weights" in text and "--size" in text, name
        if name in ("extract", "bench", "demo", "atlas", "train-decoder", "train-mapper", "audit"):
            assert "--images" in text, name
    for name in ("invert", "bench", "video"):
        for method in INVERTERS:
            assert method in helps[name], (name, method)
    sizes = {
        name: parser._subparsers._group_actions[0].choices[name].get_default("size")
        for name in helps
        if name != "invert"
    }
    assert set(sizes.values()) == {128}
    with pytest.raises(SystemExit):
        main(["--version"])


def test_device_errors_are_clear(capsys):
    assert main(["demo", "--device", "foo", "--out", "x"]) == 2
    assert "`--device` 'foo'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["demo", "--device", "cuda", "--out", "x"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def _import_graph() -> dict[str, set[str]]:
    """Module -> the diffinv modules it imports (at module level or inside functions), from the source."""
    import ast

    roots = {"diffinv": ROOT / "diffinv", "diffinv.pipelines": ROOT / "pipelines", "diffinv.prompts": ROOT / "prompts"}
    files = {}
    for package, folder in roots.items():
        for file in folder.rglob("*.py"):
            parts = [p for p in file.relative_to(folder).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = file
    graph = {}
    for name, file in files.items():
        package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def test_imports_run_one_way():
    graph = _import_graph()
    library = [m for m in graph if not m.startswith("diffinv.cli") and m != "diffinv.__main__"]  # the CLI layer
    assert not [(m, t) for m in library for t in graph[m] if t.startswith("diffinv.cli")]

    def reaches(start, goal, seen):
        return any(t == goal or (t not in seen and not seen.add(t) and reaches(t, goal, seen)) for t in graph[start])

    assert not [m for m in graph if reaches(m, m, set())], "import cycle"
    assert "diffinv.jobs.video" in graph["diffinv.cli.video"] and "diffinv.cli" not in graph["diffinv.jobs.video"]
    tool = ROOT.parent / "shared" / "tools" / "import_graph.py"  # the team's tool, where it is beside the checkout
    if tool.is_file():
        result = subprocess.run([sys.executable, str(tool), str(ROOT)], capture_output=True, text=True)
        assert result.returncode == 0 and " 0 cycles, 0 library->cli imports" in result.stdout, result.stdout


def test_lazy_top_level_pipeline_export():
    # diffusers' model classes come with TargetNetwork (a ModelMixin); the pipeline, diffusers' pipelines and CLIP
    # are imported only when the pipeline is asked for
    lazy = ("diffinv.pipelines.diffinv_pipeline", "diffusers.pipelines.pipeline_utils", "transformers.models.clip")
    code = (
        f"import sys, diffinv; assert not any(m.startswith({lazy!r}) for m in sys.modules); "
        f"from diffinv import DiffInvPipeline; print(DiffInvPipeline.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "DiffInvPipeline", result.stderr
