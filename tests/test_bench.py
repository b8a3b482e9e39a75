import json

import pytest
import torch

from diffinv.cli import main
from diffinv.datasets import load_dataset
from diffinv.inverters import PixelInverter
from diffinv.io import save_image
from diffinv.jobs.bench import PeakMemory, run_benchmark


def test_builtin_datasets():
    images, names, labels = load_dataset("foolbox-imagenet", 32, limit=3)
    assert images.shape == (3, 3, 32, 32) and names[0] == "imagenet_00_243.jpg" and labels[0] == 243
    images, names, labels = load_dataset("skimage", 32, limit=2)
    assert names == ["chelsea", "coffee"] and labels == [None, None]
    with pytest.raises(ValueError, match="`dataset` 'nope' is not one of"):
        load_dataset("nope", 32)


def test_bench_cli_on_a_folder(tmp_path, photos_64px):
    folder = tmp_path / "imgs"
    for i, img in enumerate(photos_64px[:2]):
        save_image(img, folder / f"{i}.png")
    out = tmp_path / "bench"
    args = [
        "bench",
        "--target",
        "tf_efficientnet_lite0",
        "--layers",
        "blocks.2",
        "--methods",
        "pixel",
        "--images",
        str(folder),
        "--size",
        "32",
        "--seeds",
        "0",
        "1",
        "--iterations",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert sorted((r["seed"], r["image"]) for r in records) == [(0, "0.png"), (0, "1.png"), (1, "0.png"), (1, "1.png")]
    assert all(r["lpips"] is None or r["lpips"] >= 0 for r in records)
    assert (out / "psnr_vs_depth.png").is_file() and (out / "grid.png").is_file()
    assert " [" in (out / "results.md").read_text()  # means with their bootstrap intervals
    (tmp_path / "empty").mkdir()
    assert main([*args[:-2], "--out", str(tmp_path / "b2"), "--images", str(tmp_path / "empty")]) == 2


def test_interrupted_benchmark_keeps_finished_records(tmp_path, photos_64px):
    from diffinv.targets import TargetNetwork

    target = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.1", "blocks.2"], input_size=(32, 32))
    images = torch.nn.functional.interpolate(photos_64px[:2], size=(32, 32))
    calls = {"n": 0}

    class Flaky(PixelInverter):
        def invert(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return super().invert(*args, **kwargs)

    methods = {"pixel": lambda t: Flaky(t, iterations=2)}
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(target, images, ["a", "b"], ["blocks.1", "blocks.2"], methods, tmp_path, progress=False)
    first = json.loads((tmp_path / "results.json").read_text())["records"]
    assert {r["layer"] for r in first} == {"blocks.1"} and len(first) == 2
    records = run_benchmark(target, images, ["a", "b"], ["blocks.1", "blocks.2"], methods, tmp_path, progress=False)
    assert calls["n"] == 3  # only the unfinished layer was run again
    assert len(records) == 4 and [r for r in records if r["layer"] == "blocks.1"] == first


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as small:
        pass
    with PeakMemory() as big:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block += 1
        import time

        time.sleep(0.05)
    assert big.peak_mb - small.peak_mb > 40


def test_every_sample_photo_loads():
    from diffinv.io import SAMPLE_PHOTOS, sample_images

    assert sample_images(SAMPLE_PHOTOS, 16).shape == (len(SAMPLE_PHOTOS), 3, 16, 16)
