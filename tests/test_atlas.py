"""diffinv atlas (diffinv.jobs.atlas): the split, the outputs, resume, and early stopping (diffinv.optimization)."""

import json

import pytest
import torch

from diffinv.cli import main
from diffinv.jobs.atlas import split_images
from diffinv.jobs.atlas_report import summarize_intervals, write_atlas_table
from diffinv.optimization import EarlyStopping, run_optimization
from diffinv.stats import bootstrap_ci, format_ci, paired_difference_ci
from diffinv.targets import ATLAS_LAYERS


def _atlas(folder, out, *extra):
    return main(
        [
            "atlas",
            "--images",
            str(folder),
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
            "4",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_atlas_end_to_end_split_and_resume(tmp_path, six_photos_48px_dir, one_thread, capsys):
    out = tmp_path / "atlas"
    assert _atlas(six_photos_48px_dir, out) == 0
    printed = capsys.readouterr().out
    assert "time (this run, 24 records made, 0 resumed): decoder training" in printed

    for name in ("results.md", "results.json", "atlas_depth.png", "gallery.png", "timing.json", "bench/records.jsonl"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    split = manifest["settings"]["split"]
    assert len(split["train"]) == 2 and len(split["evaluation"]) == 4
    assert not set(split["train"]) & set(split["evaluation"])  # disjoint, and recorded
    assert manifest["settings"]["early_stop"] == {"patience": 40, "min_delta": 0.01}
    # the decoders were trained on the training images only
    for layer in ("blocks.0", "blocks.2"):
        log = json.loads((out / "decoders" / layer / "training_log.json").read_text())
        assert sorted(log["config"]["images"] + log["config"]["val_images"]) == split["train"]
        assert len(log["config"]["val_images"]) == 1
        # the precision the decoders trained in, as resolved (never "auto"), in both manifests
        trained = json.loads((out / "decoders" / layer / "manifest.json").read_text())["settings"]["mixed_precision"]
        assert trained in ("no", "bf16") and manifest["settings"]["decoder_training"]["mixed_precision"] == trained
    records = [json.loads(line) for line in (out / "bench" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 * 4  # layers x methods x evaluation images
    evaluated = {r["image"] for r in records}
    assert evaluated == {p.rsplit("/", 1)[-1] for p in split["evaluation"]}
    assert not evaluated & {p.rsplit("/", 1)[-1] for p in split["train"]}
    table = (out / "results.md").read_text()
    assert "| blocks.2 | decoder | black | 4 |" in table and " [" in table and "Paired differences" in table
    rows = json.loads((out / "results.json").read_text())["rows"]
    low, high = rows[0]["psnr"][1], rows[0]["psnr"][2]
    assert low <= rows[0]["psnr"][0] <= high

    # resume: nothing is trained or inverted again
    files = [*(out / "decoders").rglob("*.safetensors"), out / "bench" / "records.jsonl"]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert _atlas(six_photos_48px_dir, out) == 0
    assert "0 records made, 24 resumed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len((out / "bench" / "records.jsonl").read_text().splitlines()) == len(records)
    assert len(json.loads((out / "results.json").read_text())["training"]) == 2
    # another split is refused, naming the change
    assert _atlas(six_photos_48px_dir, out, "--seed", "1") == 2
    assert "split" in capsys.readouterr().err


def test_split_is_deterministic_disjoint_and_checked(tmp_path):
    files = [f"d/{i:03d}.jpg" for i in range(20)]
    a = split_images(files, 0.75, seed=3, num_images=4)
    assert a == split_images(list(reversed(files)), 0.75, seed=3, num_images=4)
    assert len(a.train) == 15 and len(a.evaluation) == 4 and not set(a.train) & set(a.evaluation)
    assert split_images(files, 0.75, seed=4).train != a.train
    assert len(split_images(files, 5, seed=0).train) == 5
    with pytest.raises(ValueError, match="leaves no evaluation image"):
        split_images(files, 20)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_images(files, 1.5)


def test_atlas_layers_span_stem_to_head():
    layers = ATLAS_LAYERS["tf_efficientnet_lite0"]
    assert len(layers) >= 8 and layers[0] == "bn1" and layers[-1] == "bn2"


def test_early_stopping_stops_and_freezes():
    # image 0 converges at once (its loss is flat), image 1 keeps improving for longer
    target = torch.tensor([[0.0], [0.0]])
    x = torch.tensor([[0.0], [50.0]], requires_grad=True)

    def step(variables):
        (v,) = variables
        per_image = ((v - target) ** 2).sum(1) + torch.tensor([1.0, 1.0])
        return per_image.detach(), [torch.autograd.grad(per_image.sum(), v)[0]]

    result = run_optimization(
        [x],
        step,
        iterations=500,
        lr=0.5,
        num_images=2,
        schedule=False,
        progress=False,
        early_stop=EarlyStopping(patience=5, min_delta=0.01),
    )
    ran = result.iterations.tolist()
    assert ran[0] == 6 and 6 < ran[1] < 500  # image 0 stops after its patience, the batch when both have
    assert len(result.history) == ran[1]
    assert x[0].item() == 0.0  # frozen at its best iterate
    full = run_optimization(
        [torch.tensor([[0.0], [50.0]], requires_grad=True)],
        step,
        iterations=500,
        lr=0.5,
        num_images=2,
        schedule=False,
        progress=False,
    )
    assert len(full.history) == 500 and full.iterations.tolist() == [500, 500]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_bootstrap_intervals_and_summary(tmp_path):
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and low < mean < high and (low, high) == bootstrap_ci([1.0, 2.0, 3.0, 4.0])[1:]
    assert paired_difference_ci([2.0, 3.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)
    assert format_ci(1.0, 0.5, 1.5) == "1.00 [0.50, 1.50]"
    records = [
        {"layer": "l", "method": "m", "image": f"{i}", "seed": s, "psnr": float(i + s)}
        for i in range(3)
        for s in (0, 1)
    ]
    (row,) = summarize_intervals(records, ["l"], ["m"])
    assert row["n"] == 3 and row["psnr"][0] == pytest.approx(1.5) and "judge_similarity" not in row
    # the judge's and the true labels' scores, under the keys the benchmark's records carry, become columns
    for r in records:
        r.update(judge_similarity=0.5, judge_accuracy=1.0, judge_agreement=None, top1_accuracy=0.0)
    (row,) = summarize_intervals(records, ["l"], ["m"])
    assert row["judge_similarity"][0] == pytest.approx(0.5) and row["judge_accuracy"][0] == 1.0
    assert "judge_agreement" not in row and row["top1_accuracy"][0] == 0.0
    head = write_atlas_table([row], [], tmp_path / "results.md").splitlines()[0]
    assert "judge feature cos." in head and "judge acc. (recon.)" in head and "judge agr." not in head


def test_bench_early_stop_is_recorded_and_stops(tmp_path, one_thread):
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.bench import run_benchmark
    from diffinv.targets import TargetNetwork

    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.0", weights="random:0", input_size=(32, 32))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rule = EarlyStopping(patience=2, min_delta=0.5)  # a 50 % fall every 2 iterations: stops at once
    records = run_benchmark(
        target,
        images,
        ["a", "b"],
        ["blocks.0"],
        {"pixel": lambda t: PixelInverter(t, iterations=50)},
        tmp_path / "bench",
        progress=False,
        early_stop=rule,
    )
    assert all(r["iterations_run"] < 50 for r in records)
    manifest = json.loads((tmp_path / "bench" / "manifest.json").read_text())
    assert manifest["settings"]["early_stop"] == {"patience": 2, "min_delta": 0.5}
