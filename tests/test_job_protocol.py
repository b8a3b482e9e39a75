"""The one job protocol (diffinv.jobs.items): typed work items, and the trainings of atlas and audit as work
items of the runner: two independent processes started together on one run folder train each model once."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch import env, run_diffinv

from diffinv.jobs.atlas import AtlasJob
from diffinv.jobs.audit import AttackItem, UtilityItem
from diffinv.jobs.bench import BenchItem, work_items
from diffinv.jobs.items import TrainingItem
from diffinv.jobs.training import NOT_SETTINGS, PER_MODEL, TRAINED_KINDS, TrainConfig, template_settings
from diffinv.jobs.video import WindowItem

HERE = Path(__file__).parent


def _run_twice(job: str, out: Path, images: Path) -> list[str]:
    """Two independent processes of ``concurrent_job.py`` on ``out``, released together; their outputs."""
    go = out.parent / f"{out.name}.go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "concurrent_job.py"), job, str(out), str(images), str(go)],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(out.parent.glob(f"{out.name}.ready.*"))) < 2 and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0 and "done" in stdout, stderr[-3000:]
    return [
        [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("trained ")] for stdout, _ in results
    ]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_independent_atlas_processes_train_each_decoder_once(tmp_path, six_photos_32px_dir):
    out = tmp_path / "atlas"
    trained = _run_twice("atlas", out, six_photos_32px_dir)
    # every decoder trained by exactly one of the two processes, and both took part
    assert sorted(trained[0] + trained[1]) == ["decoders/blocks.0", "decoders/blocks.1", "decoders/blocks.2"]
    assert trained[0] and trained[1], trained
    trainings = [r for r in _records(out / "records.jsonl") if r["kind"] == "training"]
    # one record per decoder: each was trained by one process only, never resumed or redone by the other
    assert sorted(r["layer"] for r in trainings) == ["blocks.0", "blocks.1", "blocks.2"]
    for layer in ("blocks.0", "blocks.1", "blocks.2"):
        log = json.loads((out / "decoders" / layer / "training_log.json").read_text())
        assert log["step"] == 12 and log["resumed_from"] is None
    bench = _records(out / "bench" / "records.jsonl")
    keys = [(r["layer"], r["method"], r["image"]) for r in bench]
    assert len(keys) == len(set(keys)) == 3 * 2 * 3  # layers x methods x evaluation images, each once
    assert not (out / ".claims").exists()


def test_two_independent_audit_processes_train_each_decoder_once(tmp_path, six_photos_32px_dir):
    out = tmp_path / "audit"
    trained = _run_twice("audit", out, six_photos_32px_dir)
    assert sorted(trained[0] + trained[1]) == sorted(
        f"decoders/{folder}/{layer}"
        for folder in ("none", "noise-0.5")
        for layer in ("blocks.0", "blocks.1", "blocks.2")
    )
    assert trained[0] and trained[1], trained
    records = _records(out / "records.jsonl")
    trainings = sorted((r["layer"], r["defense"]) for r in records if r["kind"] == "training")
    # naive (clean features) and adaptive (noise:0.5) decoder per layer, each trained once
    assert trainings == sorted(
        (layer, spec) for layer in ("blocks.0", "blocks.1", "blocks.2") for spec in ("none", "noise:0.5")
    )
    for folder in ("none", "noise-0.5"):
        for layer in ("blocks.0", "blocks.1", "blocks.2"):
            log = json.loads((out / "decoders" / folder / layer / "training_log.json").read_text())
            assert log["resumed_from"] is None
    attacks = [
        (r["layer"], r["defense"], r["method"], r["attacker"], r["image"]) for r in records if r["kind"] == "attack"
    ]
    assert len(attacks) == len(set(attacks))  # every attack once
    report = json.loads((out / "report.json").read_text())
    assert {row["defense"] for row in report["settings"]} == {"none", "noise:0.5"}


def test_atlas_under_torchrun_trains_each_decoder_together_then_resumes_alone(tmp_path, six_photos_32px_dir):
    """2 processes of a launch train each decoder together (the main process claims it and tells the other),
    share the benchmark's items, and a later single command on the folder has nothing left to do."""
    argv = [
        "atlas",
        "--images",
        str(six_photos_32px_dir),
        "--train-split",
        "2",
        "--weights",
        "random:0",
        "--size",
        "32",
        "--layers",
        "blocks.0",
        "blocks.2",
        "--iterations",
        "2",
        "--max-steps",
        "2",
        "--train-batch-size",
        "4",
        "--hidden-channels",
        "8",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "atlas"),
    ]
    two = run_diffinv(*argv, processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "24 records made, 0 resumed" in two.stdout and "2 process(es)" in two.stdout
    out = tmp_path / "atlas"
    assert sorted(r["layer"] for r in _records(out / "records.jsonl") if r["kind"] == "training") == [
        "blocks.0",
        "blocks.2",
    ]
    assert not (out / "records.rank1.jsonl").exists() or not [
        r for r in _records(out / "records.rank1.jsonl") if r.get("kind") == "training"
    ]  # the main one records
    shards = [_records(path) for path in sorted((out / "bench").glob("records*.jsonl"))]
    assert len(shards) == 2 and all(shards) and sum(map(len, shards)) == 24  # both processes inverted
    again = run_diffinv(*argv, "--workers", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 records made, 24 resumed" in again.stdout


def test_work_items_are_typed():
    item = work_items(["l1"], ["pixel"], [0], 3, batch_size=2)[1]
    assert item == BenchItem("l1", "pixel", 0, range(2, 3)) and str(item) == "l1 pixel seed 0 images 2-2"
    assert (
        str(AttackItem("l", "noise:1", "pixel", "adaptive", 0, range(0, 2))) == "l noise:1 pixel adaptive images 0-1"
    )
    assert str(UtilityItem("l", "none", range(0, 1))) == "l none utility images 0-0"
    assert str(WindowItem((4, 5, 6))) == "frames 4-6"
    assert str(TrainingItem("decoder", "decoder", "l", "topk:0.1", Path("x"))) == "train decoder l (topk:0.1)"


def test_one_definition_of_what_is_not_a_setting():
    template = TrainConfig(out="x", layer="l", images=["a.png"], max_steps=3, defense="noise:1")
    settings = template_settings(template)
    assert not set(settings) & set(NOT_SETTINGS + PER_MODEL)
    assert settings["max_steps"] == 3 and settings["images"] == ["a.png"]
    assert "model" not in settings and "pixel_weight" not in settings  # a decoder ignores them
    assert "images" not in template_settings(template, filled=("images",))
    assert "model" in template_settings(TrainConfig(out="", layer="", kind="mapper", model="tiny"))
    assert set(TRAINED_KINDS) == {"decoder", "mapper"}
    with pytest.raises(ValueError, match="`kind` 'gan' is not a kind of model"):
        template_settings(TrainConfig(out="", layer="", kind="gan"))


def test_trained_methods_are_read_from_the_class(tmp_path, six_photos_32px_dir):
    from diffinv.inverters import DecoderInverter, PixelInverter
    from diffinv.io import collect_images
    from diffinv.jobs.atlas import split_images
    from diffinv.targets import TargetNetwork

    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.0", weights="random:0", input_size=(32, 32))
    split = split_images(collect_images([six_photos_32px_dir]), 3, seed=0)
    with pytest.raises(ValueError, match="the atlas trains the decoders of 'decoder' itself"):
        AtlasJob(
            target,
            split,
            ["blocks.0"],
            {"decoder": lambda t: DecoderInverter(t, decoder="x")},
            tmp_path / "a",
            size=32,
            seeds=(0,),
            batch_size=2,
            early_stop=None,
            overwrite=False,
            progress=False,
            state=None,
        )
    with pytest.raises(ValueError, match="'pixel' needs no trained model"):
        AtlasJob(
            target,
            split,
            ["blocks.0"],
            {"pixel": TrainConfig(out="", layer="")},
            tmp_path / "b",
            size=32,
            seeds=(0,),
            batch_size=2,
            early_stop=None,
            overwrite=False,
            progress=False,
            state=None,
        )
    job = AtlasJob(
        target,
        split,
        ["blocks.0"],
        {"pixel": lambda t: PixelInverter(t, iterations=1), "decoder": TrainConfig(out="", layer="", device="cpu")},
        tmp_path / "c",
        size=32,
        seeds=(0,),
        batch_size=2,
        early_stop=None,
        overwrite=False,
        progress=False,
        state=None,
    )
    assert job.items() == [TrainingItem("decoder", "decoder", "blocks.0", "none", job.out / "decoders" / "blocks.0")]
    assert job.method_names == ["pixel", "decoder"]
