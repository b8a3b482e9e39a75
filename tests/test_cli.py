import json

import pytest

from diffinv.cli import main
from diffinv.io import save_image


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, photos_64px):
    folder = tmp_path_factory.mktemp("photos")
    return [str(save_image(img, folder / f"{name}.png")) for img, name in zip(photos_64px[:2], ["cat", "coffee"])]


def test_extract_then_invert_with_references(photo_files, tmp_path):
    feats = tmp_path / "f.safetensors"
    assert main(["extract", *photo_files, "--layer", "blocks.2", "--size", "64", "-o", str(feats)]) == 0
    out = tmp_path / "out"
    code = main(
        [
            "invert",
            str(feats),
            "--method",
            "pixel",
            "--iterations",
            "5",
            "--reference",
            *photo_files,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["psnr"]) == 2 and all(5 < v < 60 for v in metrics["psnr"])
    assert len(metrics["ssim"]) == 2 and len(metrics["top1_agreement"]) == 2
    assert sorted(p.name for p in out.glob("*.png")) == ["cat_pixel.png", "coffee_pixel.png"]


@pytest.mark.parametrize("flag, grey_start", [(None, None), ("grey", True), ("random", False)])
def test_dip_start_flag_reaches_dip_only(lite0_64px, flag, grey_start):
    import argparse

    from diffinv.cli import common

    parser = argparse.ArgumentParser()
    common.add_method_args(parser)
    args = parser.parse_args([] if flag is None else ["--dip-start", flag])
    args.device = "cpu"
    assert common.inverter_factory("dip", args)(lite0_64px).config.grey_start is grey_start
    assert common.inverter_factory("dip+pixel", args)(lite0_64px).start.config.grey_start is grey_start
    assert (
        common.inverter_factory("pixel", args)(lite0_64px).settings()["method"] == "pixel"
    )  # ignored, as --param by dip


def test_cli_errors_are_clear(photo_files, tmp_path, capsys):
    assert main(["extract", *photo_files, "--layer", "layer3", "-o", str(tmp_path / "f.safetensors")]) == 2
    assert "Valid layer names are" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(["extract", str(broken), "--layer", "blocks.1", "-o", str(tmp_path / "g.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "could not be decoded" in err and "broken.png" in err
    assert not (tmp_path / "g.safetensors").exists()


def test_demo_writes_grid_tables_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--size",
        "32",
        "--num-images",
        "2",
        "--iterations",
        "3",
        "--layers",
        "blocks.1",
        "blocks.6",
        "--workers",
        "1",
    ]  # in this process (the monkeypatch below)
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 2 * 2 * 2  # layers x methods x images
    assert {r["method"] for r in results["records"]} == {"pixel", "dip"}
    table = (out / "results.md").read_text()
    assert "| blocks.1 | dip |" in table and "| blocks.6 | pixel |" in table
    from PIL import Image

    assert Image.open(out / "grid.png").size[1] > 2 * 32

    # A second run finds every record done and inverts nothing.
    from diffinv.inverters import DIPInverter, PixelInverter

    for cls in (DIPInverter, PixelInverter):
        monkeypatch.setattr(cls, "invert", lambda *a, **k: pytest.fail("recomputed a finished record"))
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["records"] == results["records"]
