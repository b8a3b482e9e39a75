"""Run folders as attack surfaces: nothing in one is ever unpickled; the caller's config is not changed.

A payload (a pickle whose ``__reduce__`` creates a marker file) is planted in every file of a
training checkpoint and of bench / audit / video run folders; running the same command again must
resume cleanly or stop with a clear error, and the marker must never appear.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from diffinv.io import sample_images
from diffinv.jobs.checkpoints import CheckpointError
from diffinv.jobs.store import RunSettingsError
from diffinv.jobs.training import TrainConfig, train_decoder


class Payload:
    """Unpickling it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def payloads(marker: Path) -> dict[str, bytes]:
    """The payload as a raw pickle and as a ``torch.save`` file (a zip whose data.pkl carries it)."""
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    raw = pickle.dumps(Payload(marker), protocol=4)
    pickle.loads(raw)  # the payload works: unpickling it creates the marker
    assert marker.is_file()
    marker.unlink()
    return {"pickle": raw, "torch": buffer.getvalue()}


def train_config(out, photo_dir, **kwargs) -> TrainConfig:
    values = dict(
        out=str(out),
        layer="blocks.1",
        images=[str(photo_dir)],
        size=32,
        batch_size=2,
        max_steps=2,
        hidden_channels=8,
        min_channels=8,
        warmup_steps=1,
        checkpoint_every=1,
        keep_checkpoints=5,
        val_every=1,
        weights="random:0",
        device="cpu",
        progress=False,
    )
    values.update(kwargs)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(three_photos_48px_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "decoder"
    config = train_config(out, three_photos_48px_dir, kind="mapper")
    before = dataclasses.asdict(config)
    result = train_decoder(config)
    return out, config, before, result


def test_training_leaves_the_callers_config_alone(trained):
    _, config, before, result = trained
    assert dataclasses.asdict(config) == before and config.kind == "mapper"
    assert result.log["config"]["kind"] == "decoder"


def test_checkpoint_holds_no_pickle(trained):
    out, *_ = trained
    checkpoint = out / "checkpoints" / "checkpoint-0000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "generator.safetensors",
        "model.safetensors",
        "optimizer.pt",
        "random_states_0.safetensors",
        "scheduler.pt",
        "trainer_state.json",
    ]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["format"] == 2
    for name in ("optimizer.pt", "scheduler.pt"):  # weights-only files
        torch.load(checkpoint / name, weights_only=True)


def test_payload_in_any_checkpoint_file_never_runs(trained, three_photos_48px_dir, tmp_path):
    out, *_ = trained
    marker = tmp_path / "PWNED"
    files = sorted(p.name for p in (out / "checkpoints" / "checkpoint-0000002").iterdir())
    for name in files:
        for kind, payload in payloads(marker).items():
            run = tmp_path / f"{name}-{kind}"
            shutil.copytree(out, run)
            shutil.rmtree(run / "checkpoints" / "checkpoint-0000001")
            (run / "checkpoints" / "checkpoint-0000002" / name).write_bytes(payload)
            with pytest.raises(
                CheckpointError, match=rf"(?s){name}'.*nothing in a run folder is unpickled|older diffinv"
            ):
                train_decoder(train_config(run, three_photos_48px_dir))
            assert not marker.exists(), f"a payload in {name} ({kind}) ran"


def test_planted_pickles_beside_a_checkpoint_are_ignored(trained, three_photos_48px_dir, tmp_path):
    """accelerate's old file names (and every other file of the run folder) carry payloads: a clean resume."""
    out, *_ = trained
    marker = tmp_path / "PWNED"
    payload = payloads(marker)["pickle"]
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "checkpoints" / "checkpoint-0000002")  # resume from step 1: trains a step
    (run / "diffusion_pytorch_model.safetensors").unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (run / "checkpoints" / "checkpoint-0000001" / name).write_bytes(payload)
    for name in ("training_log.json", "loss_curve.png", "config.json"):
        (run / name).write_bytes(payload)
    result = train_decoder(train_config(run, three_photos_48px_dir))
    assert result.log["resumed_from"] == 1 and result.step == 2 and not marker.exists()
    assert result.log["losses"] == trained[3].log["losses"]  # the same run as the uninterrupted one


def test_checkpoint_of_the_pickled_format_is_refused(trained, three_photos_48px_dir, tmp_path):
    out, *_ = trained
    marker = tmp_path / "PWNED"
    run = tmp_path / "old"
    shutil.copytree(out, run)
    checkpoint = run / "checkpoints" / "checkpoint-0000002"
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2}))  # what accelerate-era diffinv wrote
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(payloads(marker)["torch"])
    with pytest.raises(CheckpointError, match="format 1, expected 2: it was written by an older diffinv"):
        train_decoder(train_config(run, three_photos_48px_dir))
    assert not marker.exists()


def test_payload_as_manifest_is_refused(trained, three_photos_48px_dir, tmp_path):
    out, *_ = trained
    marker = tmp_path / "PWNED"
    run = tmp_path / "manifest"
    shutil.copytree(out, run)
    (run / "manifest.json").write_bytes(payloads(marker)["pickle"])
    with pytest.raises(RunSettingsError, match="is not a diffinv run manifest"):
        train_decoder(train_config(run, three_photos_48px_dir))
    assert not marker.exists()


# ---------------------------------------------------------------------- bench, audit, video run folders
def plant_everywhere(folder: Path, payload: bytes, *, manifest: bool) -> int:
    """Writes ``payload`` over every file of a run folder (the manifest only with ``manifest``) and
    adds a claims folder full of it; returns the number of files."""
    claims = folder / ".claims"
    claims.mkdir(exist_ok=True)
    for name in ("000000", "000001", ".active"):
        (claims / name).write_bytes(payload)
    files = [p for p in folder.rglob("*") if p.is_file() and (manifest or p.name != "manifest.json")]
    for path in files:
        path.write_bytes(payload)
    return len(files)


def rerun_with_payloads(run, folder: Path, tmp_path: Path, expected_outputs):
    """Runs ``run(folder)`` once, plants payloads everywhere, runs it again (a clean resume, which redoes
    what it cannot read), and once more with the manifest replaced too (refused)."""
    marker = tmp_path / "PWNED"
    run(folder)
    payload = payloads(marker)["pickle"]
    assert plant_everywhere(folder, payload, manifest=False) >= 5
    run(folder)
    assert not marker.exists()
    for name in expected_outputs:  # written again, as they should be
        assert (folder / name).read_bytes() != payload
    plant_everywhere(folder, payloads(marker)["torch"], manifest=True)
    with pytest.raises(RunSettingsError, match="is not a diffinv run manifest"):
        run(folder)
    assert not marker.exists()


def test_payloads_in_a_bench_folder_never_run(random_lite0_blocks1_32px, chelsea_coffee_32px, tmp_path):
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.bench import run_benchmark

    def run(folder):
        records = run_benchmark(
            random_lite0_blocks1_32px,
            chelsea_coffee_32px,
            ["a", "b"],
            ["blocks.1"],
            {"pixel": lambda t: PixelInverter(t, iterations=2)},
            folder,
            batch_size=1,
            progress=False,
        )
        assert len(records) == 2 and all(r["psnr"] is not None for r in records)

    rerun_with_payloads(run, tmp_path / "bench", tmp_path, ["results.json", "results.md", "grid.png"])


def test_payloads_in_an_audit_folder_never_run(random_lite0_blocks1_32px, chelsea_coffee_32px, tmp_path):
    from diffinv.defenses import parse_defenses
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.audit import run_audit

    def run(folder):
        report = run_audit(
            random_lite0_blocks1_32px,
            chelsea_coffee_32px,
            ["a", "b"],
            ["blocks.1"],
            parse_defenses(["none", "noise:0.5"]),
            {"pixel": lambda t: PixelInverter(t, iterations=2)},
            folder,
            progress=False,
        )
        assert [row["defense"] for row in report["settings"]] == ["none", "noise:0.5"]

    rerun_with_payloads(run, tmp_path / "audit", tmp_path, ["report.json", "report.md"])


def test_payloads_in_a_video_folder_never_run(random_lite0_blocks1_32px, tmp_path):
    from diffinv.features import FeatureSet
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.video import invert_video

    frames = sample_images(("chelsea",), 32).repeat(3, 1, 1, 1) * torch.linspace(0.6, 1, 3)[:, None, None, None]
    features = FeatureSet.extract(random_lite0_blocks1_32px, frames, "blocks.1")

    def run(folder):
        out = invert_video(
            PixelInverter(random_lite0_blocks1_32px, iterations=2),
            features,
            window=2,
            references=frames,
            out_dir=folder,
            progress=False,
        )
        assert all(out.done)

    rerun_with_payloads(run, tmp_path / "video", tmp_path, ["metrics.json"])


def test_a_record_after_a_line_cut_short_is_kept(tmp_path):
    from diffinv.jobs.store import RunStore

    store = RunStore(tmp_path, "bench", {})
    store.append({"k": 1})
    with open(store.records_path, "ab") as f:
        f.write(b'{"k": 2, "ps')  # a crash in the middle of a write
    store.append({"k": 3})
    assert store.records() == [{"k": 1}, {"k": 3}]
    assert store.new_records() == [{"k": 1}, {"k": 3}]
    store.append({"k": 4})
    with open(store.records_path, "ab") as f:
        f.write(b'{"k": 5')  # being written: read once complete
    assert store.new_records() == [{"k": 4}]
    with open(store.records_path, "ab") as f:
        f.write(b"}\n")
    assert store.new_records() == [{"k": 5}] and store.new_records() == []


def test_a_claim_that_is_a_link_is_refused_and_its_target_untouched(
    random_lite0_blocks1_32px, chelsea_coffee_32px, tmp_path
):
    from diffinv.inverters import PixelInverter
    from diffinv.jobs.bench import run_benchmark

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    folder = tmp_path / "bench"
    (folder / ".claims").mkdir(parents=True)
    (folder / ".claims" / "000000").symlink_to(precious)
    with pytest.raises(RunSettingsError, match=r"claim file .*000000.* cannot be opened"):
        run_benchmark(
            random_lite0_blocks1_32px,
            chelsea_coffee_32px,
            ["a", "b"],
            ["blocks.1"],
            {"pixel": lambda t: PixelInverter(t, iterations=1)},
            folder,
            batch_size=1,
            progress=False,
        )
    assert precious.read_text() == "keep me"


def test_a_claims_folder_that_is_a_link_is_refused(tmp_path):
    from diffinv.jobs.items import ItemClaims

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".claims").symlink_to(elsewhere)
    with pytest.raises(RunSettingsError, match="is not a folder of claims"):
        ItemClaims(tmp_path / "run")
    assert not list(elsewhere.iterdir())
