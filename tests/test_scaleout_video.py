"""`diffinv video` over several clips: one run folder per clip, summary.json, resume, and the same
results when the clips are split across 2 real processes (torchrun, gloo on CPU)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from launch import run_diffinv

from diffinv.jobs.store import unique_names

HEIGHT, WIDTH = 48, 64
CLIPS = ["a/clip.mp4", "b/clip.mp4"]  # the same file name in two folders: unique_names keeps them apart
ARGS = [
    "--layer",
    "blocks.2",
    "--size",
    "32",
    "--iterations",
    "2",
    "--frames",
    "3",
    "--window",
    "2",
    "--temporal-weight",
    "1",
]


def synthetic_frame(i: int, shift: int) -> np.ndarray:
    """A colour gradient with a white square moving right by ``shift`` px per frame (uint8 HWC)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 40 * shift)], axis=-1).astype(np.uint8)
    frame[12:28, 4 + shift * i : 20 + shift * i] = 255
    return frame


def write_clip(path: Path, shift: int, frames: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(i, shift), format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    """Two short, different synthetic clips (written with PyAV): ``a/clip.mp4`` (6 frames) and
    ``b/clip.mp4`` (4 frames)."""
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / CLIPS[0], shift=2, frames=6)
    write_clip(root / CLIPS[1], shift=4, frames=4)
    return root


def diffinv(root: Path, *argv: str, processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m diffinv ARGV`` in ``root`` (under torchrun with ``processes``), one OpenMP thread per process."""
    return run_diffinv(*argv, processes=processes, cwd=root, timeout=300)


def per_frame_psnr(out: Path, names: list[str]) -> dict:
    return {
        name: [r["psnr"] for r in json.loads((out / name / "metrics.json").read_text())["frames"]] for name in names
    }


def assert_close(a, b, tol=1e-6):
    """Equal JSON values, numbers within ``tol``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b)
        for key in a:
            assert_close(a[key], b[key], tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, tol)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tol)
    else:
        assert a == b


@pytest.fixture(scope="module")
def one_process_run(clips_dir):
    """``diffinv video a/clip.mp4 b/clip.mp4 --out D1`` in one process."""
    result = diffinv(clips_dir, "video", *CLIPS, *ARGS, "--out", "D1")
    assert result.returncode == 0, result.stderr
    return result


def test_several_clips_one_process_writes_a_folder_per_clip_and_resumes(clips_dir, one_process_run):
    names = unique_names(CLIPS)
    assert len(set(names)) == 2 and all(n.startswith("clip-") for n in names)
    out = clips_dir / "D1"
    for clip, name in zip(CLIPS, names):
        folder = out / name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert [r["frame"] for r in metrics["frames"]] == [0, 1, 2]
        assert metrics["config"]["source"] == str((clips_dir / clip).resolve())
        assert sorted(p.name for p in (folder / "frames").iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]
        assert (folder / "manifest.json").is_file() and (folder / "reconstruction.mp4").is_file()
    assert not (out / "frames").exists() and not (out / "manifest.json").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert [(r["clip"], r["folder"]) for r in summary["clips"]] == list(zip(CLIPS, names))
    psnrs = per_frame_psnr(out, names)
    for row, name in zip(summary["clips"], names):
        assert row["frames"] == row["frames_done"] == 3
        assert row["psnr_mean"] == pytest.approx(sum(psnrs[name]) / 3)
        for key in ("ssim_mean", "temporal_consistency", "source_temporal_consistency", "flicker"):
            assert key in row
    assert summary["frames_done"] == 6
    assert summary["psnr_mean"] == pytest.approx(sum(psnrs[names[0]] + psnrs[names[1]]) / 6)
    assert psnrs[names[0]] != psnrs[names[1]]  # two different clips

    again = diffinv(clips_dir, "video", *CLIPS, *ARGS, "--out", "D1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("0 frames computed now, 3 resumed") == 2
    assert json.loads((out / "summary.json").read_text()) == summary


def test_several_clips_bad_input_refused_before_any_work(clips_dir):
    bad = diffinv(clips_dir, "video", CLIPS[0], "missing/clip.mp4", *ARGS, "--out", "E1")
    assert bad.returncode == 2 and "'missing/clip.mp4' does not exist" in bad.stderr
    short = diffinv(clips_dir, "video", *CLIPS, *ARGS, "--start", "2", "--out", "E1")  # b/clip.mp4 has 4 frames
    assert short.returncode == 2 and "outside the clip: 'b/clip.mp4' has 4 frames" in short.stderr
    several = diffinv(clips_dir, "video", *CLIPS, *ARGS, "--features", "f.safetensors", "--out", "E1")
    assert several.returncode == 2 and "`--features` holds the features of one clip, but 2 clips" in several.stderr
    assert not (clips_dir / "E1").exists()  # nothing written


def test_several_clips_split_across_two_processes_match_one_process(clips_dir, one_process_run):
    result = diffinv(clips_dir, "video", *CLIPS, *ARGS, "--out", "D2", processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    names = unique_names(CLIPS)
    for rank, clip in enumerate(CLIPS):  # one clip per process
        assert f"process {rank} of 2 inverts {clip} (1 of 2 clips)" in result.stdout
    assert result.stdout.count("3 frames computed now, 0 resumed") == 2
    assert_close(per_frame_psnr(clips_dir / "D2", names), per_frame_psnr(clips_dir / "D1", names))
    for name in names:  # each clip was inverted by one process alone: its records are in records.jsonl
        assert not list((clips_dir / "D2" / name).glob("records.rank*.jsonl"))
    one = json.loads((clips_dir / "D1" / "summary.json").read_text())
    assert_close(json.loads((clips_dir / "D2" / "summary.json").read_text()), one)


def test_one_clip_of_independent_windows_split_across_two_processes(clips_dir):
    """``--temporal-weight 0``: the windows of one clip are independent, so 2 processes share them."""
    args = [
        "video",
        CLIPS[0],
        "--layer",
        "blocks.2",
        "--size",
        "32",
        "--iterations",
        "2",
        "--frames",
        "6",
        "--window",
        "2",
        "--temporal-weight",
        "0",
        "--no-mp4",
    ]
    one = diffinv(clips_dir, *args, "--out", "S1")
    assert one.returncode == 0, one.stderr
    two = diffinv(clips_dir, *args, "--out", "S2", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1 of 2 shares the windows of a/clip.mp4 with the others" in two.stdout
    assert "6 frames computed now, 0 resumed" in two.stdout  # reported once, by the main process, for all
    s1, s2 = clips_dir / "S1", clips_dir / "S2"
    assert not (s2 / "summary.json").exists() and (s2 / "metrics.json").is_file()  # the one-clip layout
    shards = [
        [r["window"] for r in map(json.loads, (s2 / f).read_text().splitlines())]
        for f in ("records.jsonl", "records.rank1.jsonl")
    ]
    # each window claimed by one process (both frames in its shard): process 0 starts from the first window,
    # process 1 from the last, and the middle one goes to whichever is free first
    assert shards[0][:2] == [0, 0] and shards[1][:2] == [4, 4]
    assert sorted(shards[0] + shards[1]) == [0, 0, 2, 2, 4, 4] and not set(shards[0]) & set(shards[1])
    m1, m2 = (json.loads((s / "metrics.json").read_text()) for s in (s1, s2))
    strip = lambda frames: [{k: v for k, v in r.items() if k != "seconds"} for r in frames]  # noqa: E731
    assert_close(strip(m2["frames"]), strip(m1["frames"]))  # temporal diffs across windows included
    assert_close(
        {k: v for k, v in m2["summary"].items() if not k.startswith("seconds")},
        {k: v for k, v in m1["summary"].items() if not k.startswith("seconds")},
    )

    again = diffinv(clips_dir, *args, "--out", "S2")  # a run split over 2 processes resumes in one
    assert again.returncode == 0 and "0 frames computed now, 6 resumed" in again.stdout
