"""`diffinv train-decoder` data-parallel over 2 real processes (torchrun, gloo on CPU).

``--batch-size`` is the global batch: both processes draw the same crops from the one seeded
generator and each trains on its half, so a 2-process run follows the loss curve of a 1-process
run with the same batch (up to the order of float reductions). The number of processes is not
a setting: a run interrupted after its first checkpoint is finished with another number of
processes, from that checkpoint, under the same manifest.
"""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from launch import command, env, run_diffinv
from safetensors.torch import load_file

from diffinv.cli import main
from diffinv.io import save_image

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6
TRAIN = [
    "train-decoder",
    "--layer",
    "blocks.2",
    "--size",
    "32",
    "--max-steps",
    str(STEPS),
    "--batch-size",
    "4",
    "--hidden-channels",
    "8",
    "--lr",
    "3e-3",
    "--checkpoint-every",
    "2",
    "--keep-checkpoints",
    "5",
    "--val-every",
    "3",
    "--device",
    "cpu",
    # fp32: one process and two agree to float rounding (bf16, where auto picks it, rounds the half
    # batches' sums differently)
    "--mixed-precision",
    "no",
]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def diffinv(*argv: str, processes: int = 1) -> subprocess.CompletedProcess:
    return run_diffinv(*argv, processes=processes)


def log(out: Path) -> dict:
    return json.loads((out / "training_log.json").read_text())


def interrupted_copy(run: Path, dest: Path, after: int) -> Path:
    """``run`` as if it had been stopped just after its checkpoint at step ``after``."""
    shutil.copytree(run, dest)
    for checkpoint in (dest / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > after:
            shutil.rmtree(checkpoint)
    return dest


def assert_close_curves(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) == STEPS
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory, photos_64px):
    """The same training run in one process (``one``) and in 2 torchrun processes (``two``)."""
    root = tmp_path_factory.mktemp("scaleout_training")
    photos = root / "photos"
    photos.mkdir()
    for i, image in enumerate(photos_64px):
        save_image(image, photos / f"photo{i}.png")
    outs = {"one": root / "one", "two": root / "two"}
    for name, processes in (("one", 1), ("two", 2)):
        done = diffinv(*TRAIN, "--images", str(photos), "--out", str(outs[name]), processes=processes)
        assert done.returncode == 0, done.stderr[-8000:]
        assert f"trained to step {STEPS}" in done.stdout
    return {"photos": photos, **outs}


def test_two_processes_follow_the_one_process_loss_curve(training_runs):
    one, two = log(training_runs["one"]), log(training_runs["two"])
    assert one["step"] == two["step"] == STEPS and one["skipped_steps"] == two["skipped_steps"] == 0
    assert_close_curves(one["losses"], two["losses"])
    # validation on the main process, at the same steps, of (nearly) the same model
    assert [v["step"] for v in one["validation"]] == [v["step"] for v in two["validation"]] == [3, 6]
    assert abs(one["validation"][-1]["psnr"] - two["validation"][-1]["psnr"]) < 1e-3
    a, b = load_file(training_runs["one"] / WEIGHTS), load_file(training_runs["two"] / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    # the process count is no setting: both runs have the same manifest
    manifest = json.loads((training_runs["two"] / "manifest.json").read_text())
    assert "processes" not in manifest["settings"] and manifest["settings"]["batch_size"] == 4
    assert manifest == json.loads((training_runs["one"] / "manifest.json").read_text())
    # every process wrote its accelerate RNG state; the model, optimizer and trainer state once
    checkpoint = training_runs["two"] / "checkpoints" / "checkpoint-0000002"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert {
        "random_states_0.safetensors",
        "random_states_1.safetensors",
        "generator.safetensors",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
    } == set(names)


def test_two_process_run_resumed_with_one_process(training_runs, tmp_path):
    out = interrupted_copy(training_runs["two"], tmp_path / "two_then_one", after=2)
    manifest = (out / "manifest.json").read_bytes()
    assert main([*TRAIN, "--images", str(training_runs["photos"]), "--out", str(out)]) == 0
    resumed = log(out)
    assert resumed["resumed_from"] == 2 and resumed["step"] == STEPS
    assert resumed["losses"][:2] == log(training_runs["two"])["losses"][:2]  # restored from the checkpoint
    assert_close_curves(resumed["losses"], log(training_runs["two"])["losses"])
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "checkpoints" / f"checkpoint-{STEPS:07d}").is_dir()


def test_one_process_run_resumed_with_two_processes(training_runs, tmp_path):
    out = interrupted_copy(training_runs["one"], tmp_path / "one_then_two", after=2)
    manifest = (out / "manifest.json").read_bytes()
    done = diffinv(*TRAIN, "--images", str(training_runs["photos"]), "--out", str(out), processes=2)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "resumed from step 2" in done.stdout
    resumed = log(out)
    assert resumed["resumed_from"] == 2 and resumed["step"] == STEPS
    assert_close_curves(resumed["losses"], log(training_runs["one"])["losses"])
    assert (out / "manifest.json").read_bytes() == manifest
    # a global batch that does not split evenly is refused, before anything is written
    bad = diffinv(
        *TRAIN,
        "--images",
        str(training_runs["photos"]),
        "--batch-size",
        "3",
        "--out",
        str(tmp_path / "bad"),
        processes=2,
    )
    assert bad.returncode != 0 and "divisible by the number of processes, 2" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_two_process_run_killed_then_finished_by_one_process(training_runs, tmp_path):
    """A real interruption: the 2-process run is stopped (SIGTERM to torchrun, which terminates its
    workers) just after its first checkpoint, possibly while writing the next one; one process finishes it."""
    out, steps = tmp_path / "killed", 20
    argv = [*TRAIN, "--max-steps", str(steps), "--images", str(training_runs["photos"]), "--out", str(out)]
    proc = subprocess.Popen(
        command(*argv, processes=2),
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "checkpoints" / "checkpoint-0000002"
    deadline = time.monotonic() + 300
    try:
        while not first.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)  # torchrun stops its workers (own sessions) with SIGTERM and waits
        proc.wait(timeout=120)
    assert first.is_dir(), "the 2-process run wrote no checkpoint"
    manifest = (out / "manifest.json").read_bytes()
    assert not (out / "checkpoints" / f"checkpoint-{steps:07d}").exists()  # it was cut short
    assert main(argv) == 0
    resumed = log(out)
    assert 2 <= resumed["resumed_from"] < steps and resumed["step"] == steps and len(resumed["losses"]) == steps
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "checkpoints" / f"checkpoint-{steps:07d}").is_dir()
