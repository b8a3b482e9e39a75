"""Run folders, records and the command line under attack (issue 34, items 4-8).

* ``--overwrite`` on a folder that was never a run (a user's photos) is refused; no run deletes a file it did
  not write.
* Records and manifests that are links are refused before any work, never read through.
* Records are not trusted as read: items of other runs, duplicates and non-finite values are left out or
  resolved, and said (a warning and a note in the table).
* List flags refuse a value given twice; seeds, ``--workers`` and ``--size`` are checked before any work;
  ``--workers`` and decoder training are in the memory estimate (the training one under an address-space limit,
  so that a regression fails fast instead of filling the machine).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffinv.cli import main
from diffinv.jobs.store import RunSettingsError, RunStore

pytestmark = pytest.mark.usefixtures("one_thread")

# Address space of one `python -m diffinv train-decoder` at 16 px: importing torch maps about 3.3 GB of it.
ADDRESS_SPACE = 6 * 2**30


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# Where a check at parse time is tested: should it be missing, the command fails at once instead of running a job.
NO_DEVICE = ("--device", "nope")


def usage_error(capsys, *argv) -> str:
    """The message of a refused command: exit code 2 (through argparse or the command's own check)."""
    try:
        code, err = run(capsys, *argv)
    except SystemExit as exit_info:
        code, err = exit_info.code, capsys.readouterr().err
    assert code == 2, err
    assert f"diffinv {argv[0]}: error:" in err and "Traceback" not in err, err
    return err


def bench_argv(photo_dir, out, *extra, workers="1"):
    return [
        "bench",
        "--images",
        photo_dir,
        "--size",
        "16",
        "--layers",
        "blocks.1",
        "--methods",
        "pixel",
        "--iterations",
        "1",
        "--seeds",
        "0",
        "--weights",
        "random:0",
        "--judge",
        "none",
        "--workers",
        workers,
        "--device",
        "cpu",
        "--out",
        out,
        *extra,
    ]


def bench(target, images, folder, **kwargs):
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.bench import run_benchmark

    return run_benchmark(
        target,
        images,
        ["a.png", "b.png"],
        ["blocks.1"],
        {"pixel": lambda t: PixelInverter(t, iterations=1)},
        folder,
        batch_size=1,
        progress=False,
        **kwargs,
    )


def no_work(monkeypatch):
    """Any inversion from here on fails the test: a refusal must come before the work."""
    from diffinv.inverters import PixelInverter

    def invert(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    monkeypatch.setattr(PixelInverter, "invert", invert)


# ---------------------------------------------------------------------- --overwrite (item 5)
def user_folder(root: Path) -> tuple[Path, dict[Path, bytes]]:
    """A folder of a user's photos, never a run, whose subfolder has the name a bench run writes (images/)."""
    folder = root / "myphotos"
    (folder / "images").mkdir(parents=True)
    files = {
        folder / "images" / "holiday_2019.png": b"\x89PNG holiday",
        folder / "images" / "wedding.jpg": b"jpeg",
        folder / "notes.txt": b"mine",
    }
    for path, data in files.items():
        path.write_bytes(data)
    return folder, files


@pytest.mark.hostile("overwrite-user-folder")
def test_overwrite_never_deletes_a_folder_that_is_not_a_run(capsys, chelsea_coffee_16px_dir, tmp_path, monkeypatch):
    folder, files = user_folder(tmp_path)
    no_work(monkeypatch)
    for extra in ((), ("--overwrite",)):
        err = usage_error(capsys, *bench_argv(chelsea_coffee_16px_dir, folder, *extra))
        assert repr(str(folder)) in err and "is not a diffinv run folder" in err, err
        assert "pass --overwrite" not in err, err
        assert {p: p.read_bytes() for p in files} == files and not (folder / "manifest.json").exists()


@pytest.mark.hostile("overwrite-user-folder")
@pytest.mark.parametrize(
    "job", ["bench", "audit", "atlas", "video", "training", "visualize", "channels", "dead_filters"]
)
def test_no_job_clears_a_folder_that_is_not_a_run(tmp_path, job):
    """Every --overwrite path (each goes through RunStore with its job's outputs): refused, nothing deleted."""
    import importlib

    if job == "training":
        from diffinv.jobs.training.loop import _outputs

        outputs = _outputs()
    else:
        module = importlib.import_module(
            f"diffinv.{'cli' if job in ('visualize', 'channels', 'dead_filters') else 'jobs'}.{job}"
        )
        outputs = module.OUTPUTS
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {folder / "holiday_2019.png": b"png", folder / "keep.txt": b"x"}
    for name in outputs:  # the user's files carry the names the job writes
        path = folder / name
        if "." in name:
            files[path] = b"user's own " + name.encode()
        else:
            path.mkdir()
            files[path / "wedding.jpg"] = b"jpeg"
    for path, data in files.items():
        path.write_bytes(data)
    for overwrite in (False, True):
        with pytest.raises(RunSettingsError, match="is not a diffinv run folder"):
            RunStore(folder, job, {}, overwrite=overwrite, outputs=outputs)
        assert {p: p.read_bytes() for p in files} == files


@pytest.mark.hostile("overwrite-user-folder")
def test_overwrite_of_a_run_deletes_only_the_runs_files(random_lite0_blocks1_16px, chelsea_coffee_16px, tmp_path):
    """A run made in a folder of the user's (their files under other names) is replaced with --overwrite; their
    files stay. An empty folder and a new one are fine."""
    folder = tmp_path / "run"
    folder.mkdir()  # empty: a run may start there
    (folder / "photo.jpg").write_bytes(b"the user's")
    bench(random_lite0_blocks1_16px, chelsea_coffee_16px, folder)
    assert (folder / "images").is_dir() and (folder / "results.md").is_file()
    bench(
        random_lite0_blocks1_16px, chelsea_coffee_16px[:1].flip(-1).repeat(2, 1, 1, 1), folder, overwrite=True
    )  # other settings
    assert (folder / "photo.jpg").read_bytes() == b"the user's"
    assert len((folder / "records.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------------- links in place of run files (item 8)
@pytest.mark.hostile("records-symlink")
@pytest.mark.parametrize("name", ["records.jsonl", "records.rank1.jsonl", "manifest.json"])
def test_run_files_that_are_links_are_refused_before_any_work(
    random_lite0_blocks1_16px, chelsea_coffee_16px, tmp_path, monkeypatch, name
):
    folder = tmp_path / "run"
    bench(random_lite0_blocks1_16px, chelsea_coffee_16px, folder)
    elsewhere = tmp_path / "elsewhere.jsonl"
    original = (folder / name).read_bytes() if (folder / name).exists() else b""
    elsewhere.write_bytes(original.splitlines(keepends=True)[0] if name == "records.jsonl" else original)
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    no_work(monkeypatch)
    for overwrite in (False, True):
        with pytest.raises(RunSettingsError, match=rf"{name}.* is a symbolic link") as err:
            bench(random_lite0_blocks1_16px, chelsea_coffee_16px, folder, overwrite=overwrite)
        assert str(folder / name) in str(err.value) and "never read" in str(err.value)
    assert elsewhere.read_bytes() == before and (folder / name).is_symlink()


@pytest.mark.hostile("records-symlink")
def test_records_that_are_a_link_are_refused_by_the_command(capsys, chelsea_coffee_16px_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run(capsys, *bench_argv(chelsea_coffee_16px_dir, out))[0] == 0
    records = out / "records.jsonl"
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes(records.read_bytes().splitlines(keepends=True)[0])  # one of the two images
    records.unlink()
    records.symlink_to(elsewhere)
    no_work(monkeypatch)
    err = usage_error(capsys, *bench_argv(chelsea_coffee_16px_dir, out))
    assert repr(str(records)) in err and "is a symbolic link" in err, err


@pytest.mark.hostile("records-symlink")
def test_records_are_never_read_through_a_link(tmp_path):
    store = RunStore(tmp_path / "run", "bench", {})
    store.append({"k": 1})
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text('{"k": 2}\n')
    shard = store.folder / "records.rank1.jsonl"
    shard.symlink_to(elsewhere)  # planted while the run is open
    assert store.records() == [{"k": 1}] and store.new_records() == [{"k": 1}]
    fifo = store.folder / "records.rank2.jsonl"
    os.mkfifo(fifo)  # would block a reader forever
    assert store.records() == [{"k": 1}]


# ---------------------------------------------------------------------- records trusted as read (item 6)
@pytest.fixture
def finished(random_lite0_blocks1_16px, chelsea_coffee_16px, tmp_path):
    """A finished 2-image bench run: ``(folder, its records, the PSNR row of results.json)``."""
    from diffinv.jobs.report import summarize

    folder = tmp_path / "run"
    records = bench(random_lite0_blocks1_16px, chelsea_coffee_16px, folder)
    assert len(records) == 2
    return folder, records, summarize(records, ["blocks.1"], ["pixel"])[0]


def rewrite(folder: Path, lines: list) -> None:
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def rerun(target, images, folder, monkeypatch) -> tuple[list[dict], str, list[str]]:
    """The run again (nothing left to do): its records, results.md and the warnings it gave."""
    no_work(monkeypatch)
    with pytest.warns(UserWarning) as caught:
        records = bench(target, images, folder)
    return records, (folder / "results.md").read_text(), [str(w.message) for w in caught]


def table_row(text: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith("| blocks.1 | pixel |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


@pytest.mark.hostile("records-non-finite")
def test_non_finite_values_leave_the_mean_and_n_and_are_reported(
    finished, random_lite0_blocks1_16px, chelsea_coffee_16px, monkeypatch
):
    folder, records, _ = finished
    a, b = (dict(r) for r in records)
    a["psnr"], b["ssim"], b["seconds"] = math.nan, math.inf, "slow"
    rewrite(folder, [a, b])
    merged, text, warned = rerun(random_lite0_blocks1_16px, chelsea_coffee_16px, folder, monkeypatch)
    cells = table_row(text)
    assert cells[3] == "2"  # images
    assert cells[4].startswith(f"{b['psnr']:.2f} [") and cells[4].endswith("(n = 1)"), cells
    assert cells[5].startswith(f"{a['ssim']:.3f} [") and "inf" not in cells[5] and "nan" not in cells[5], cells
    assert "(n = 1)" in cells[5]
    note = (
        "Left out of the means and of their n, not a finite number (NaN, infinite or not a number): PSNR 1 value "
        "(blocks.1 pixel); SSIM 1 value (blocks.1 pixel); s / image 1 value (blocks.1 pixel)."
    )
    assert note in text, text
    assert any(note in w for w in warned), warned

    from diffinv.jobs.report import summarize

    row = summarize(merged, ["blocks.1"], ["pixel"])[0]
    assert row["psnr"][0] == pytest.approx(b["psnr"]) and row["counts"]["psnr"] == 1
    assert row["excluded"] == {"psnr": 1, "ssim": 1, "seconds": 1}


@pytest.mark.hostile("records-foreign-items")
def test_records_of_items_not_in_the_run_are_left_out_and_reported(
    finished, random_lite0_blocks1_16px, chelsea_coffee_16px, monkeypatch
):
    folder, records, row = finished
    foreign = [
        {**records[0], "image": "zzz.png", "psnr": 99.0},
        {**records[0], "layer": "blocks.6", "psnr": 99.0},
        {**records[0], "seed": 7, "psnr": 99.0},
        {"k": 1},
        {**records[0], "image": ["unhashable"]},
    ]
    rewrite(folder, [*records, *foreign])
    merged, text, warned = rerun(random_lite0_blocks1_16px, chelsea_coffee_16px, folder, monkeypatch)
    assert [r["image"] for r in merged] == ["a.png", "b.png"]
    assert table_row(text)[3] == "2"
    assert table_row(text)[4].startswith(f"{row['psnr'][0]:.2f} [")
    assert "5 records of items that are not in this run" in text, text
    assert any("not in this run" in w for w in warned), warned
    assert json.loads((folder / "results.json").read_text())["records"] == merged


@pytest.mark.hostile("records-duplicates")
def test_duplicated_records_are_resolved_and_reported(
    finished, random_lite0_blocks1_16px, chelsea_coffee_16px, monkeypatch
):
    folder, records, row = finished
    planted = {**records[0], "psnr": 99.0}
    rewrite(folder, [planted, *records])  # placed first: the first written used to count
    merged, text, warned = rerun(random_lite0_blocks1_16px, chelsea_coffee_16px, folder, monkeypatch)
    assert [r["psnr"] for r in merged] == [r["psnr"] for r in records]
    assert table_row(text)[4].startswith(f"{row['psnr'][0]:.2f} [")
    note = "1 item has several records (blocks.1 pixel 0 a.png): the last written of each is kept"
    assert note in text, text
    assert any(note in w for w in warned), warned


@pytest.mark.hostile("records-non-finite")
def test_video_summary_leaves_out_values_that_are_not_finite():
    from diffinv.jobs.video import video_summary

    frames = torch.rand(3, 3, 16, 16)
    records = [
        {"frame": 0, "psnr": 10.0, "ssim": 0.5},
        {"frame": 1, "psnr": math.nan, "ssim": math.inf},
        {"frame": 2, "psnr": "high", "ssim": 0.7},
    ]
    with pytest.warns(UserWarning, match="not a finite number"):
        summary = video_summary(frames, frames, [True] * 3, records)
    assert summary["psnr_mean"] == 10.0 and summary["psnr_left_out"] == 2
    assert summary["ssim_mean"] == pytest.approx(0.6) and summary["ssim_left_out"] == 1


@pytest.mark.hostile("records-non-finite", "records-foreign-items", "records-duplicates")
def test_audit_records_are_not_trusted_as_read(random_lite0_blocks1_16px, chelsea_coffee_16px, tmp_path, monkeypatch):
    from diffinv.defenses import parse_defenses
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.audit import run_audit

    def audit():
        return run_audit(
            random_lite0_blocks1_16px,
            chelsea_coffee_16px,
            ["a.png", "b.png"],
            ["blocks.1"],
            parse_defenses(["none"]),
            {"pixel": lambda t: PixelInverter(t, iterations=1)},
            tmp_path / "audit",
            progress=False,
        )

    report = audit()
    records = [json.loads(line) for line in (tmp_path / "audit" / "records.jsonl").read_text().splitlines()]
    attacks = [r for r in records if r["kind"] == "attack"]
    good = report["settings"][0]["attacks"]["pixel"]["naive"]
    nan = {**attacks[0], "psnr": math.nan}
    rewrite(
        tmp_path / "audit",
        [
            *records,
            {**attacks[0], "image": "zzz.png", "psnr": 99.0},
            {"kind": "attack"},
            {**attacks[1], "psnr": 99.0},
            nan,
        ],
    )  # the last of a.png: NaN
    no_work(monkeypatch)
    with pytest.warns(UserWarning):
        again = audit()
    naive = again["settings"][0]["attacks"]["pixel"]["naive"]
    assert naive["n"] == 2 and naive["psnr_n"] == 1 and naive["psnr"] == 99.0  # b.png's last record
    assert naive["ssim"] == pytest.approx(good["ssim"])
    text = (tmp_path / "audit" / "report.md").read_text()
    assert "2 records of items that are not in this run" in text, text
    assert "2 items have several records" in text and "the last written of each is kept" in text, text
    assert (
        "Left out of the means, not a finite number (NaN, infinite or not a number): psnr (blocks.1 none pixel "
        "naive)." in text
    ), text
    assert "(n = 1)" in text


# ---------------------------------------------------------------------- command line (items 4, 7, 8)
@pytest.mark.hostile("duplicate-layers")
@pytest.mark.parametrize(
    "argv, flag, value",
    [
        (["bench", "--layers", "blocks.1", "blocks.1", "--out", "x"], "--layers", "blocks.1"),
        (["bench", "--layers", "blocks.1", "--methods", "pixel", "dip", "pixel", "--out", "x"], "--methods", "pixel"),
        (["bench", "--layers", "blocks.1", "--seeds", "0", "1", "0", "--out", "x"], "--seeds", 0),
        (["bench", "--images", "a.png", "a.png", "--out", "x"], "--images", "a.png"),
        (["audit", "--defenses", "none", "noise:0.1", "none", "--out", "x"], "--defenses", "none"),
        (["audit", "--layers", "blocks.1", "blocks.1", "--out", "x"], "--layers/--layer", "blocks.1"),
        (["atlas", "--images", "d", "--methods", "pixel", "pixel", "--out", "x"], "--methods", "pixel"),
        (["dead-filters", "--layers", "blocks.1", "blocks.1", "--out", "x"], "--layers", "blocks.1"),
        (["visualize", "--layer", "blocks.1", "--channels", "3", "3", "--out", "x"], "--channels", 3),
        (["video", "clip.mp4", "clip.mp4", "--layer", "blocks.1", "--out", "x"], "video", "clip.mp4"),
    ],
)
def test_a_value_given_twice_is_refused(capsys, tmp_path, monkeypatch, argv, flag, value):
    monkeypatch.chdir(tmp_path)
    err = usage_error(capsys, argv[0], *NO_DEVICE, *argv[1:])
    assert f"argument {flag}: {value!r} is given twice; expected each value once" in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.hostile("seed-overflow")
@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--layers", "blocks.1", "--out", "x", "--seeds", "0"],
        ["audit", "--out", "x", "--seeds"],
        ["atlas", "--images", "d", "--out", "x", "--seed"],
        ["invert", "f.safetensors", "--out", "x", "--seed"],
        ["video", "clip.mp4", "--layer", "blocks.1", "--out", "x", "--seed"],
        ["train-decoder", "--layer", "blocks.1", "--images", "d", "--out", "x", "--seed"],
        ["visualize", "--layer", "blocks.1", "--channels", "3", "--out", "x", "--seed"],
        ["channels", "p.png", "--layer", "blocks.1", "--channels", "3", "--out", "x", "--seed"],
    ],
)
def test_seeds_beyond_the_generators_are_refused(capsys, argv):
    flag = next(a for a in reversed(argv) if a.startswith("--seed"))
    for value in (str(2**64), str(2**32), "-1", "9" * 5000):
        err = usage_error(capsys, argv[0], *NO_DEVICE, *argv[1:], value)
        assert f"argument {flag}: expected a seed in 0 .. 4294967295 (2**32 - 1)" in err, err
        assert len(err) < 2000, err[:300]  # a long value is cut short
    for value in ("0", str(2**32 - 1)):  # the bounds themselves are fine
        from diffinv.cli.common import seed_int

        assert seed_int(value) == int(value)
    torch.Generator().manual_seed(2**32 - 1)  # the largest seed that every generator takes
    import numpy as np

    np.random.seed(2**32 - 1)
    with pytest.raises(ValueError):
        np.random.seed(2**32)


@pytest.mark.hostile("workers-memory")
def test_the_estimate_counts_each_processs_own_base():
    from diffinv.inverters import memory_costs
    from diffinv.resources import PROCESS_BASE_BYTES, estimate_memory

    one = estimate_memory("tf_efficientnet_lite0", ["blocks.1"], 32, images=2, methods=memory_costs(["pixel"]))
    eight = estimate_memory(
        "tf_efficientnet_lite0", ["blocks.1"], 32, images=2, methods=memory_costs(["pixel"]), processes=8
    )
    assert PROCESS_BASE_BYTES >= 900 * 2**20  # measured: see its comment in diffinv/resources.py
    # the process that checks is already running: its base is not counted again; 8 new workers are
    assert eight.total >= one.total + 8 * PROCESS_BASE_BYTES
    assert "8 process bases" in eight.breakdown(), eight.breakdown()


@pytest.mark.hostile("workers-memory")
def test_workers_above_the_cores_are_refused_unless_forced(capsys, chelsea_coffee_16px_dir, tmp_path, monkeypatch):
    import diffinv.cli.bench
    import diffinv.resources as resources
    from diffinv.jobs.distributed import available_cores

    def no_launch(*args, **kwargs):
        raise AssertionError("the workers were launched")

    monkeypatch.setattr(diffinv.cli.bench, "launch_local", no_launch)
    out = tmp_path / "out"
    cores = available_cores()
    err = usage_error(capsys, *bench_argv(chelsea_coffee_16px_dir, out, workers="64"))
    assert (
        f"`--workers` 64: this process may use {cores} CPU core" in err
        and f"--workers {cores} or fewer" in err
        and "--force-workers" in err
    ), err
    # forced: the 64 processes' own memory is in the estimate (4 GiB do not hold them)
    monkeypatch.setattr(resources, "_host_available", lambda: 4 * 2**30)
    err = usage_error(capsys, *bench_argv(chelsea_coffee_16px_dir, out, "--force-workers", workers="64"))
    assert "the job needs an estimated" in err and "64 process bases" in err, err
    assert not out.exists()


@pytest.mark.hostile("workers-memory")
def test_workers_auto_runs_the_processes_that_fit(capsys, chelsea_coffee_16px_dir, tmp_path, monkeypatch):
    import diffinv.cli.bench
    import diffinv.resources as resources

    launched = []
    monkeypatch.setattr(diffinv.cli.bench, "launch_local", lambda argv, n: launched.append(n) or 0)
    monkeypatch.setattr("diffinv.jobs.distributed.available_cores", lambda: 8)
    monkeypatch.setattr(resources, "_host_available", lambda: 3 * 2**30)  # 2 process bases and the work fit
    argv = bench_argv(
        chelsea_coffee_16px_dir, tmp_path / "out", "--seeds", "0", "1", "2", "3", "--batch-size", "1", workers="auto"
    )
    code, err = run(capsys, *argv)
    assert code == 0 and launched == [2], err
    monkeypatch.setattr(resources, "_host_available", lambda: 2**20)  # not even one
    assert "the job needs an estimated" in usage_error(capsys, *argv)


@pytest.mark.hostile("workers-memory")
def test_atlas_counts_its_workers_in_the_estimate(capsys, chelsea_coffee_16px_dir, tmp_path, monkeypatch):
    import diffinv.cli.atlas
    import diffinv.resources as resources

    monkeypatch.setattr(diffinv.cli.atlas, "launch_local", lambda *a, **k: pytest.fail("the workers were launched"))
    monkeypatch.setattr(resources, "_host_available", lambda: 3 * 2**30)
    err = usage_error(
        capsys,
        "atlas",
        "--images",
        chelsea_coffee_16px_dir,
        "--train-split",
        "0",
        "--methods",
        "pixel",
        "--size",
        "16",
        "--layers",
        "blocks.1",
        "--weights",
        "random:0",
        "--judge",
        "none",
        "--device",
        "cpu",
        "--workers",
        "16",
        "--force-workers",
        "--out",
        tmp_path / "out",
    )
    assert "16 process bases" in err, err


def run_limited(*argv: str) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, preexec_fn=limit, env=env
    )


@pytest.mark.hostile("training-memory")
@pytest.mark.parametrize("kind", ["decoder", "mapper"])
def test_training_too_wide_for_memory_is_refused_before_any_work(chelsea_coffee_16px_dir, tmp_path, kind):
    out = tmp_path / "out"
    extra = ["--model", "tiny"] if kind == "mapper" else []
    done = run_limited(
        "-m",
        "diffinv",
        f"train-{kind}",
        "--layer",
        "blocks.1",
        "--images",
        str(chelsea_coffee_16px_dir),
        "--size",
        "16",
        "--hidden-channels",
        "100000",
        "--max-steps",
        "1",
        "--weights",
        "random:0",
        "--device",
        "cpu",
        *extra,
        "--out",
        str(out),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr
    assert err.startswith(f"diffinv train-{kind}: error: the training needs an estimated") and "Traceback" not in err
    assert "decoder weights" in err or "mapper weights" in err, err
    assert "optimizer state" in err and "--hidden-channels" in err, err
    assert not out.exists()


@pytest.mark.hostile("training-memory")
@pytest.mark.parametrize("job", ["atlas", "audit"])
def test_decoders_a_job_trains_are_checked_before_any_work(chelsea_coffee_16px_dir, tmp_path, job):
    out = tmp_path / "out"
    extra = (
        ["--train-split", "1", "--workers", "1"]
        if job == "atlas"
        else ["--train-images", str(chelsea_coffee_16px_dir / "a.png"), "--defenses", "none"]
    )
    done = run_limited(
        "-m",
        "diffinv",
        job,
        "--images",
        str(chelsea_coffee_16px_dir),
        "--methods",
        "decoder",
        "--size",
        "16",
        "--layers",
        "blocks.1",
        "--hidden-channels",
        "100000",
        "--weights",
        "random:0",
        "--judge",
        "none",
        "--device",
        "cpu",
        *extra,
        "--out",
        str(out),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"diffinv {job}: error: the training needs an estimated"), done.stderr[-2000:]
    assert not out.exists()


@pytest.mark.hostile("training-memory")
def test_the_training_estimate_follows_the_width():
    from diffinv.jobs.training import TrainConfig, estimate_training_memory

    def estimate(width):
        return estimate_training_memory(
            TrainConfig(
                out="", layer="blocks.1", size=32, batch_size=4, weights=None, hidden_channels=width, min_channels=8
            )
        )

    small, wide = estimate(8), estimate(1024)
    params = wide.compute["decoder weights"] / 1.5 / 4  # float32, with the margin
    assert params > 2 * 9 * 1024 * 1024  # two 3x3 convolutions of 1024 channels at least
    assert wide.compute["optimizer state"] == pytest.approx(2 * wide.compute["decoder weights"], rel=0.01)
    assert wide.total > 10 * small.total


@pytest.mark.hostile("bench-size-below-ssim")
@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--layers", "blocks.1", "--out", "x"],
        ["demo", "--out", "x"],
        ["atlas", "--images", "d", "--out", "x"],
        ["audit", "--out", "x"],
        ["video", "clip.mp4", "--layer", "blocks.1", "--out", "x"],
        ["train-decoder", "--layer", "blocks.1", "--images", "d", "--out", "x"],
        ["train-mapper", "--layer", "blocks.1", "--images", "d", "--model", "tiny", "--out", "x"],
    ],
)
def test_sizes_below_ssims_window_are_refused_before_any_work(capsys, argv):
    for size in ("8", "10"):
        err = usage_error(capsys, *argv, *NO_DEVICE, "--size", size)
        assert (
            f"argument --size: expected an integer >= 11 (SSIM's 11-pixel window, "
            f"diffinv.metrics.MIN_IMAGE_SIZE), got {size}"
        ) in err, err
    err = usage_error(capsys, *argv, *NO_DEVICE, "--size", "0")
    assert "argument --size: expected a positive integer (>= 1), got 0" in err, err


@pytest.mark.hostile("bench-size-below-ssim")
def test_the_smallest_size_is_ssims_window():
    from diffinv.app import limits
    from diffinv.metrics import MIN_IMAGE_SIZE, ssim

    assert MIN_IMAGE_SIZE == 11 and limits.MIN_SIZE == MIN_IMAGE_SIZE
    x = torch.rand(1, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)
    assert ssim(x, x).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        ssim(x[..., :-1], x[..., :-1])


def test_extract_keeps_sizes_below_ssims_window(capsys, chelsea_coffee_16px_dir, tmp_path):
    """extract computes no metric: a small size stays allowed there."""
    out = tmp_path / "f.safetensors"
    code, err = run(
        capsys,
        "extract",
        chelsea_coffee_16px_dir / "a.png",
        "--layer",
        "blocks.1",
        "--size",
        "8",
        "--weights",
        "random:0",
        "-o",
        out,
    )
    assert code == 0 and out.is_file(), err
