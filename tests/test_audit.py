"""diffinv audit (diffinv.jobs.audit): the report's structure, resume, the adaptive attacker, bad inputs."""

import json
import time

import pytest
import torch

from diffinv.cli import main
from diffinv.defenses import parse_defenses
from diffinv.features import FeatureSet
from diffinv.inverters import DecoderInverter, PixelInverter
from diffinv.jobs.audit import build_report, run_audit
from diffinv.jobs.store import RunSettingsError
from diffinv.jobs.training import TrainConfig
from diffinv.metrics import psnr


def test_audit_report_structure_and_resume(
    tmp_path, lite0_blocks1_32px, foolbox_imagenet_32px, photos_224px_dir, one_thread
):
    images, names, _ = foolbox_imagenet_32px
    defenses = parse_defenses(["none", "topk:0.1"])
    decoder = TrainConfig(
        out="",
        layer="",
        images=[str(photos_224px_dir)],
        max_steps=2,
        batch_size=4,
        hidden_channels=16,
        min_channels=8,
        val_fraction=0.0,
        device="cpu",
        warmup_steps=1,
    )
    methods = {"pixel": lambda t: PixelInverter(t, iterations=3), "decoder": decoder}
    out = tmp_path / "audit"
    report = run_audit(lite0_blocks1_32px, images, names, ["blocks.1"], defenses, methods, out, progress=False)

    saved = json.loads((out / "report.json").read_text())
    assert saved["config"]["defenses"] == ["none", "topk:0.1"] and saved["config"]["layers"] == ["blocks.1"]
    assert saved["config"]["methods"]["decoder"]["training"]["max_steps"] == 2
    assert [(r["layer"], r["defense"]) for r in saved["settings"]] == [("blocks.1", "none"), ("blocks.1", "topk:0.1")]
    none, topk = saved["settings"]
    assert none["utility"] == 1.0 and 0.0 <= topk["utility"] <= 1.0
    for row in saved["settings"]:
        assert set(row["attacks"]) == {"pixel", "decoder"}
        for method in ("pixel", "decoder"):
            for attacker in ("naive", "adaptive"):
                entry = row["attacks"][method][attacker]
                assert entry["n"] == 2 and entry["psnr"] > 0 and 0 <= entry["top1_agreement"] <= 1
    # without a defense the adaptive attacker is the naive one; with one they are separate runs
    assert none["attacks"]["pixel"]["adaptive"] == none["attacks"]["pixel"]["naive"]
    assert saved["recommendation"]["blocks.1"]["defense"] in ("none", "topk:0.1")
    assert saved["cost_seconds"]["decoder_training_seconds"] > 0 and saved["cost_seconds"]["attack_seconds"] > 0
    assert saved["settings"] == json.loads(json.dumps(report["settings"]))
    for name in ("report.md", "privacy_utility.png", "grid_blocks.1.png"):
        assert (out / name).is_file(), name
    assert "| topk:0.1 |" in (out / "report.md").read_text()
    for folder in ("none", "topk-0.1"):
        assert (out / "decoders" / folder / "blocks.1" / "config.json").is_file()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    # 2 images x (2 utility + pixel naive x 2 + pixel adaptive + decoder naive x 2 + decoder adaptive) + 2 trainings
    assert kinds.count("utility") == 4 and kinds.count("attack") == 12 and kinds.count("training") == 2
    for r in records:
        if r["kind"] == "attack":
            assert (out / r["file"]).is_file()

    # resume: the same settings run nothing again; other settings are refused
    tic = time.perf_counter()
    again = run_audit(lite0_blocks1_32px, images, names, ["blocks.1"], defenses, methods, out, progress=False)
    assert len((out / "records.jsonl").read_text().splitlines()) == len(records)
    assert again["settings"] == report["settings"]
    assert time.perf_counter() - tic < 30
    with pytest.raises(RunSettingsError, match="iterations"):
        run_audit(
            lite0_blocks1_32px,
            images,
            names,
            ["blocks.1"],
            defenses,
            {"pixel": lambda t: PixelInverter(t, iterations=4), "decoder": decoder},
            out,
            progress=False,
        )


def test_interrupted_audit_resumes_where_it_stopped(tmp_path, lite0_blocks1_32px, foolbox_imagenet_32px, one_thread):
    images, names, _ = foolbox_imagenet_32px
    defenses = parse_defenses(["none", "quantize:2"])
    out = tmp_path / "audit"
    methods = {"pixel": lambda t: PixelInverter(t, iterations=2)}
    full = run_audit(
        lite0_blocks1_32px, images, names, ["blocks.1"], defenses, methods, out, batch_size=1, progress=False
    )
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:3]) + "\n")  # interrupted after three records
    resumed = run_audit(
        lite0_blocks1_32px, images, names, ["blocks.1"], defenses, methods, out, batch_size=1, progress=False
    )
    assert len((out / "records.jsonl").read_text().splitlines()) == len(lines)
    strip = lambda rows: [  # noqa: E731
        {
            **r,
            "attacks": {
                m: {
                    a: {k: v for k, v in (e or {}).items() if not k.startswith("seconds")}
                    for a, e in entry.items()
                    if a != "adaptive_reason"
                }
                for m, entry in r["attacks"].items()
            },
        }
        for r in rows
    ]
    assert strip(resumed["settings"]) == strip(full["settings"])


def test_adaptive_decoder_is_not_worse_than_naive_on_its_own_defense(
    tmp_path, lite0_blocks1_32px, foolbox_imagenet_32px, photos_224px_dir, one_thread
):
    """The decoder trained on defended features (the adaptive attacker) against the decoder trained on
    clean ones (the naive attacker), both decoding the same defended features of held-out photos."""
    images, _, _ = foolbox_imagenet_32px
    common = dict(
        layer="blocks.1",
        images=[str(photos_224px_dir)],
        size=32,
        max_steps=40,
        batch_size=8,
        hidden_channels=32,
        min_channels=8,
        val_fraction=0.0,
        device="cpu",
        progress=False,
        warmup_steps=5,
    )
    from diffinv.jobs.training import train_decoder

    train_decoder(TrainConfig(out=str(tmp_path / "naive"), **common))
    train_decoder(TrainConfig(out=str(tmp_path / "adaptive"), defense="noise:3", **common))
    features = FeatureSet.extract(lite0_blocks1_32px, images)
    from diffinv.defenses import apply_defense, parse_defense

    defended = apply_defense(features, parse_defense("noise:3"), torch.Generator().manual_seed(0))
    naive = DecoderInverter(lite0_blocks1_32px, decoder=tmp_path / "naive")(defended, progress=False)
    adaptive = DecoderInverter(lite0_blocks1_32px, decoder=tmp_path / "adaptive")(defended, progress=False)
    assert psnr(adaptive.images, images).mean() >= psnr(naive.images, images).mean()
    manifest = json.loads((tmp_path / "adaptive" / "manifest.json").read_text())
    assert manifest["settings"]["defense"] == "noise:3"
    assert "defense" not in json.loads((tmp_path / "naive" / "manifest.json").read_text())["settings"]


def test_feature_transform_reaches_the_loss_and_only_optimizing_methods_take_it(
    lite0_blocks1_32px, foolbox_imagenet_32px
):
    images, _, _ = foolbox_imagenet_32px
    features = FeatureSet.extract(lite0_blocks1_32px, images[:1])
    calls = []

    def transform(f):
        calls.append(f.shape)
        return f

    PixelInverter(lite0_blocks1_32px, iterations=2)(features, progress=False, feature_transform=transform)
    assert len(calls) == 2 and calls[0] == features.features.shape


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--defenses", "none", "blur:1"], "`--defenses`: defense 'blur:1': 'blur' is not a defense"),
        (
            ["--defenses", "quantize:0"],
            "the strength of 'quantize' must be an integer number of bits in 1..16, got '0'",
        ),
        (["--defenses", "prune:1.5"], r"fraction of channels in \[0, 1\)"),
        (["--methods", "pixel", "decoder", "--decoder", "x"], "the audit trains its own decoders"),
        (["--layers", "nope"], "`layer` 'nope' is not a module"),
        (["--methods", "dip", "--size", "40"], "DIP needs `image_size` divisible by 16"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, capsys, argv, match):
    out = tmp_path / "audit"
    tic = time.perf_counter()
    code = main(
        [
            "audit",
            "--weights",
            "random:0",
            "--layers",
            "blocks.1",
            "--num-images",
            "1",
            "--size",
            "32",
            "--out",
            str(out),
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "diffinv audit: error:" in err
    import re

    assert re.search(match, err), err
    assert not out.exists() and time.perf_counter() - tic < 10


def test_build_report_picks_the_setting_that_keeps_utility(tmp_path):
    def attack(defense, psnr_value):
        return {
            "kind": "attack",
            "layer": "L",
            "defense": defense,
            "method": "pixel",
            "attacker": "naive",
            "seed": 0,
            "image": "a",
            "psnr": psnr_value,
            "ssim": 0.1,
            "lpips": None,
            "top1_agreement": 1.0,
            "feature_residual": 0.1,
            "seconds": 1.0,
        }

    records = [
        {"kind": "utility", "layer": "L", "defense": d, "image": "a", "utility": u, "reason": None, "seconds": 0.1}
        for d, u in (("none", 1.0), ("noise:1", 1.0), ("noise:3", 0.0))
    ]
    records += [attack("none", 20.0), attack("noise:1", 15.0), attack("noise:3", 10.0)]
    report = build_report(records, ["L"], ["none", "noise:1", "noise:3"], ["pixel"])
    assert report["recommendation"]["L"] == {
        "defense": "noise:1",
        "utility": 1.0,
        "best_attack_psnr": 15.0,
        "psnr_drop": 5.0,
    }
    assert report["settings"][1]["attacks"]["pixel"]["adaptive"] is None  # not run in these records


def test_audit_command_end_to_end(tmp_path, capsys, one_thread):
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--weights",
        "random:0",
        "--layer",
        "blocks.1",
        "--defenses",
        "none",
        "quantize:2,1",
        "--methods",
        "pixel",
        "decoder",
        "--dataset",
        "foolbox-imagenet",
        "--num-images",
        "2",
        "--size",
        "32",
        "--iterations",
        "2",
        "--max-steps",
        "1",
        "--train-batch-size",
        "2",
        "--hidden-channels",
        "8",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "## blocks.1" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [r["defense"] for r in report["settings"]] == ["none", "quantize:2", "quantize:1"]
    training = report["config"]["methods"]["decoder"]["training"]
    # the decoders train on the offline photos, never on the audited ones
    assert training["images"] and not any(
        name in f for f in training["images"] for name in ("imagenet_00_243.jpg", "imagenet_01_559.jpg")
    )
    assert main(argv) == 0  # resumed: nothing to do
