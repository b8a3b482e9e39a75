"""Video: PyAV frame I/O, bad input, windowed inversion with temporal smoothing, resume, CLI."""

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch

from diffinv.features import FeatureSet, resolve_features
from diffinv.inverters import DIPInverter, InversionOutput, Inverter, PixelInverter
from diffinv.inverters.config import InverterConfig, option
from diffinv.io import read_video, write_side_by_side, write_video
from diffinv.jobs.store import RunSettingsError
from diffinv.jobs.video import extract_video_features, frame_path, invert_video
from diffinv.targets import TargetNetwork

NUM_FRAMES, HEIGHT, WIDTH = 12, 48, 64


def synthetic_frame(i: int) -> np.ndarray:
    """A smooth colour gradient with a white square moving right by 3 px per frame (uint8 HWC)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    frame[12:28, 4 + 3 * i : 20 + 3 * i] = 255
    return frame


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory):
    """A 12-frame 64x48 H.264 mp4 written with PyAV."""
    import av

    path = tmp_path_factory.mktemp("clip") / "tiny.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(NUM_FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(i), format="rgb24")))
        container.mux(stream.encode())
    return path


# ---------------------------------------------------------------------- reading / writing
def test_read_video_range_stride_resize(tiny_mp4):
    clip = read_video(tiny_mp4)
    assert clip.frames.shape == (NUM_FRAMES, 3, HEIGHT, WIDTH)
    assert clip.indices == list(range(NUM_FRAMES)) and clip.num_frames == NUM_FRAMES
    assert clip.fps == pytest.approx(10.0)
    expected = torch.from_numpy(synthetic_frame(5)).permute(2, 0, 1).float() / 255
    assert (clip.frames[5] - expected).abs().mean() < 0.03  # lossy codec, but the right frame
    assert (clip.frames[5] - clip.frames[6]).abs().mean() > 0.01  # and frames differ

    sub = read_video(tiny_mp4, start=2, stop=10, stride=3, size=32)
    assert sub.indices == [2, 5, 8]
    assert sub.frames.shape == (3, 3, 32, 32)
    assert sub.fps == pytest.approx(10.0 / 3)
    assert sub.names == ["tiny.mp4#2", "tiny.mp4#5", "tiny.mp4#8"]
    assert sub.frames.min() >= 0.0 and sub.frames.max() <= 1.0
    assert read_video(tiny_mp4, start=11).indices == [11]


def test_read_video_bad_input(tiny_mp4, tmp_path):
    import av

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video")
    with pytest.raises(ValueError, match="could not be read as a video"):
        read_video(tmp_path / "text.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(tiny_mp4.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not be read as a video"):
        read_video(truncated)
    audio = tmp_path / "audio.mp4"  # a valid container with no video stream
    with av.open(str(audio), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match="has no video stream"):
        read_video(audio)
    with pytest.raises(ValueError, match=r"start=12, stop=None is outside the clip: .* has 12 frames \(0..11\)"):
        read_video(tiny_mp4, start=12)
    with pytest.raises(ValueError, match="outside the clip"):
        read_video(tiny_mp4, start=4, stop=20)
    with pytest.raises(ValueError, match="`stride` >= 1"):
        read_video(tiny_mp4, stride=0)
    with pytest.raises(ValueError, match="`stop` must be greater than `start`"):
        read_video(tiny_mp4, start=5, stop=5)


def test_write_video_round_trip_and_side_by_side(tiny_mp4, tmp_path):
    clip = read_video(tiny_mp4, stop=5)
    path = write_video(clip.frames[:, :, :47, :63], tmp_path / "odd.mp4", fps=10)  # odd size: padded
    back = read_video(path)
    assert back.frames.shape == (5, 3, 48, 64) and back.fps == pytest.approx(10.0)
    assert (back.frames[:, :, :47, :63] - clip.frames[:, :, :47, :63]).abs().mean() < 0.03
    sbs = read_video(write_side_by_side(clip.frames, 1 - clip.frames, tmp_path / "sbs.mp4", fps=10))
    assert sbs.frames.shape == (5, 3, 48, 2 * 64 + 2)
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="T >= 1"):
        write_video(torch.zeros(0, 3, 8, 8), tmp_path / "none.mp4")


def test_extract_video_features(lite0_64px, tiny_mp4):
    clip = read_video(tiny_mp4, stop=5, size=64)
    fs = extract_video_features(lite0_64px, clip, "blocks.2", batch_size=2)
    assert fs.features.shape == (5, 40, 8, 8) and fs.sources == clip.names and fs.input_size == (64, 64)
    assert torch.allclose(fs.features, lite0_64px.feature(clip.frames, "blocks.2"), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- windowed inversion
@dataclasses.dataclass(frozen=True)
class RecordingConfig(InverterConfig):
    """Declares what the video job reads: a temporal weight and a warm start, no anchor."""

    method = "recording"
    accepts_init = True
    temporal_weight: float = option(0.0, "non_negative")


class RecordingInverter(Inverter):
    """No optimization: returns ``init`` (or grey) and records what each window received."""

    name = "recording"
    config_class = RecordingConfig

    def __init__(self, target, **options):
        super().__init__(target, **options)
        self.calls = []

    def invert(self, features, image_size=None, *, generator=None, progress=True, init=None):
        feats, _, size = resolve_features(self.target, features, image_size)
        self.calls.append({"n": len(feats), "init": None if init is None else init.clone()})
        images = torch.full((len(feats), 3, *size), 0.5) if init is None else init.clone()
        return InversionOutput(images, torch.zeros(1, len(feats)), torch.zeros(len(feats)), 0.0, self.name)


@pytest.fixture(scope="module")
def clip_features(lite0_64px, tiny_mp4):
    clip = read_video(tiny_mp4, stop=4, size=64)
    return clip, extract_video_features(lite0_64px, clip, "blocks.2")


def test_windows_warm_start_and_overlap(lite0_64px, clip_features):
    clip, fs = clip_features
    independent = RecordingInverter(lite0_64px, temporal_weight=0.0)
    out = invert_video(independent, fs, window=2, references=clip.frames, progress=False)
    assert [c["n"] for c in independent.calls] == [2, 2]
    assert all(c["init"] is None for c in independent.calls)  # λ = 0: independent frames
    assert out.summary["settings"]["boundary"] == "none" and out.done == [True] * 4

    # λ > 0 and no `anchor=`: the previous frame is re-inverted in front of each window.
    smooth = RecordingInverter(lite0_64px, temporal_weight=1.0)
    out = invert_video(smooth, fs, window=3, references=clip.frames, progress=False)
    assert [c["n"] for c in smooth.calls] == [3, 2]
    assert smooth.calls[0]["init"] is None and smooth.calls[1]["init"].shape == (2, 3, 64, 64)
    assert torch.equal(smooth.calls[1]["init"][1], out.images[2])  # warm start: the previous frame
    assert out.summary["settings"]["boundary"] == "overlap" and out.images.shape == (4, 3, 64, 64)
    assert len(out.records) == 4 and out.records[0]["temporal_diff"] is None

    with pytest.raises(ValueError, match="`references` has 3 frames but `features` has 4"):
        invert_video(smooth, fs, references=clip.frames[:3], progress=False)
    with pytest.raises(ValueError, match="`window` must be a positive integer"):
        invert_video(smooth, fs, window=0, progress=False)
    with pytest.raises(ValueError, match=r"shape \(4, 40, 8, 8\) but the target layer produces \(N, 112, 4, 4\)"):
        invert_video(smooth, FeatureSet(fs.features, fs.target, "blocks.4", (64, 64)), progress=False)
    with pytest.raises(ValueError, match="needs RecordingInverter.invert\\(anchor=...\\)"):
        invert_video(smooth, fs, boundary="anchor", progress=False)


def test_temporal_smoothing_steadies_reconstructions(lite0_64px, clip_features):
    clip, fs = clip_features
    figures = {}
    for weight in (0.0, 30.0):
        inverter = PixelInverter(lite0_64px, iterations=15, learning_rate=0.1, temporal_weight=weight)
        out = invert_video(inverter, fs, window=2, references=clip.frames, progress=False)
        figures[weight] = out.summary
    assert figures[30.0]["settings"]["boundary"] == "anchor" and figures[30.0]["settings"]["warm_start"]
    assert figures[30.0]["temporal_consistency"] < 0.75 * figures[0.0]["temporal_consistency"]
    assert figures[30.0]["flicker"] < figures[0.0]["flicker"]
    for summary in figures.values():
        assert np.isfinite(summary["psnr_mean"]) and summary["frames_done"] == 4


def test_dip_warm_start_and_anchor(lite0_64px, clip_features):
    clip, fs = clip_features
    dip = DIPInverter(lite0_64px, iterations=2, channels=(4, 8), init_iterations=2, temporal_weight=1.0)
    out = invert_video(dip, fs, window=2, references=clip.frames, progress=False)
    assert out.images.shape == (4, 3, 64, 64) and out.summary["settings"]["boundary"] == "anchor"
    with pytest.raises(ValueError, match="`init` must be"):
        dip.invert(fs, init=torch.zeros(2, 3, 64, 64), progress=False)


class Interrupted(Exception):
    """Stands for the process being killed mid-window."""


def test_resume_does_not_recompute_finished_frames(lite0_64px, clip_features, tmp_path, monkeypatch):
    clip, fs = clip_features
    inverter = PixelInverter(lite0_64px, iterations=5, temporal_weight=5.0)
    original = PixelInverter.invert
    calls = []

    @functools.wraps(original)
    def interrupted(self, features, *args, **kwargs):
        calls.append(len(features))
        if len(calls) == 2:
            raise Interrupted  # killed in the middle of the second window
        return original(self, features, *args, **kwargs)

    monkeypatch.setattr(PixelInverter, "invert", interrupted)
    with pytest.raises(Interrupted):
        invert_video(inverter, fs, window=2, references=clip.frames, out_dir=tmp_path, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["frame"] for r in metrics["frames"]] == [0, 1] and metrics["summary"]["frames_done"] == 2
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    assert [r["frame"] for r in map(json.loads, (tmp_path / "records.jsonl").read_text().splitlines())] == [0, 1]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["kind"] == "video" and manifest["settings"]["temporal_weight"] == 5.0
    assert manifest["settings"]["target"]["weights_fingerprint"] == lite0_64px.weights_fingerprint()
    first = frame_path(tmp_path, 0).read_bytes()

    # Other settings are refused, naming each changed setting; the folder is left as it was.
    calls.clear()
    with pytest.raises(RunSettingsError, match=r"other settings(.|\n)*temporal_weight: 5.0 there, 1.0 now"):
        invert_video(
            PixelInverter(lite0_64px, iterations=5, temporal_weight=1.0),
            fs,
            window=2,
            references=clip.frames,
            out_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(RunSettingsError, match=r"inverter.iterations: 5 there, 6 now"):
        invert_video(
            PixelInverter(lite0_64px, iterations=6, temporal_weight=5.0),
            fs,
            window=2,
            references=clip.frames,
            out_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(RunSettingsError, match=r"window: 2 there, 3 now"):
        invert_video(inverter, fs, window=3, references=clip.frames, out_dir=tmp_path, progress=False)
    assert calls == [] and frame_path(tmp_path, 0).read_bytes() == first

    # The same settings resume, with no flag.
    out = invert_video(inverter, fs, window=2, references=clip.frames, out_dir=tmp_path, progress=False)
    assert calls == [2] and out.computed == [2, 3]  # frames 0 and 1 were not inverted again
    assert frame_path(tmp_path, 0).read_bytes() == first
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["frame"] for r in metrics["frames"]] == [0, 1, 2, 3]
    assert metrics["summary"]["temporal_consistency"] == pytest.approx(
        (out.images[1:] - out.images[:-1]).abs().mean().item(), rel=1e-5
    )
    assert metrics["config"]["temporal_weight"] == 5.0 and metrics["config"]["inverter"]["iterations"] == 5
    assert not list(tmp_path.rglob("*.tmp*"))

    monkeypatch.setattr(PixelInverter, "invert", original)
    uninterrupted = invert_video(
        inverter, fs, window=2, references=clip.frames, out_dir=tmp_path / "once", progress=False
    )
    assert torch.equal(out.images, uninterrupted.images)  # resuming changes nothing

    monkeypatch.setattr(PixelInverter, "invert", interrupted)
    calls.clear()
    again = invert_video(inverter, fs, window=2, references=clip.frames, out_dir=tmp_path, progress=False)
    assert calls == [] and again.computed == [] and torch.equal(again.images, out.images)

    # A frame whose PNG is gone is inverted again (its new record is the one that counts).
    frame_path(tmp_path, 3).unlink()
    monkeypatch.setattr(PixelInverter, "invert", original)
    patched = invert_video(inverter, fs, window=2, references=clip.frames, out_dir=tmp_path, progress=False)
    assert patched.computed == [3] and frame_path(tmp_path, 3).is_file()
    assert torch.equal(patched.images[:3], out.images[:3])
    assert [r["frame"] for r in json.loads((tmp_path / "metrics.json").read_text())["frames"]] == [0, 1, 2, 3]

    # overwrite=True starts afresh, with any settings: the old records and frames are gone.
    other = PixelInverter(lite0_64px, iterations=3, temporal_weight=1.0)
    fresh = invert_video(other, fs, window=2, references=clip.frames, out_dir=tmp_path, overwrite=True, progress=False)
    assert fresh.computed == [0, 1, 2, 3]
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["temporal_weight"] == 1.0 and [r["frame"] for r in metrics["frames"]] == [0, 1, 2, 3]
    assert (tmp_path / "once").is_dir()  # what the run did not write is left alone


# ---------------------------------------------------------------------- the command
def test_cli_video_end_to_end(tiny_mp4, tmp_path, capsys):
    from diffinv.cli import main

    out = tmp_path / "run"
    argv = [
        "video",
        str(tiny_mp4),
        "--layer",
        "blocks.2",
        "--method",
        "pixel",
        "--iterations",
        "5",
        "--size",
        "32",
        "--start",
        "2",
        "--frames",
        "4",
        "--stride",
        "2",
        "--window",
        "3",
        "--temporal-weight",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["frame"] for r in metrics["frames"]] == [2, 4, 6, 8]
    assert all(r["psnr"] > 0 and 0 < r["ssim"] <= 1 for r in metrics["frames"])
    assert metrics["config"]["temporal_weight"] == 2.0 and metrics["config"]["boundary"] == "anchor"
    for key in ("psnr_mean", "temporal_consistency", "source_temporal_consistency", "flicker"):
        assert key in metrics["summary"]
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"frame_{i:05d}.png" for i in (2, 4, 6, 8)]
    assert read_video(out / "reconstruction.mp4").frames.shape == (4, 3, 32, 32)
    assert read_video(out / "side_by_side.mp4").frames.shape == (4, 3, 32, 66)

    capsys.readouterr()
    assert main(argv) == 0  # the same settings: resumed, nothing to compute
    assert "0 frames computed now, 4 resumed" in capsys.readouterr().out
    changed = [
        ("--temporal-weight", "3", "temporal_weight: 2.0 there, 3.0 now"),
        ("--iterations", "6", "inverter.iterations: 5 there, 6 now"),
        ("--stride", "1", "stride: 2 there, 1 now"),
    ]
    for flag, value, message in changed:
        new_argv = list(argv)
        new_argv[argv.index(flag) + 1] = value
        assert main(new_argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffinv video: error: cannot resume") and message in err and "--overwrite" in err
    assert (
        main(argv[: argv.index("--temporal-weight")] + ["--temporal-weight", "3", "--out", str(out), "--overwrite"])
        == 0
    )
    assert "4 frames computed now, 0 resumed" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"]["temporal_weight"] == 3.0

    assert main(["video", str(tiny_mp4), "--layer", "blocks.2", "--start", "40", "--out", str(tmp_path / "x")]) == 2
    assert "outside the clip" in capsys.readouterr().err
    wrong = FeatureSet(torch.zeros(3, 40, 4, 4), "tf_efficientnet_lite0", "blocks.2", (32, 32))
    wrong = wrong.save(tmp_path / "f.safetensors")
    assert main(argv[:-2] + ["--features", str(wrong), "--out", str(tmp_path / "y")]) == 2
    assert "holds 3 feature maps but the selected frames are 4" in capsys.readouterr().err
    other_weights = FeatureSet(
        torch.zeros(4, 40, 4, 4),
        "tf_efficientnet_lite0",
        "blocks.2",
        (32, 32),
        weights="random:1",
        weights_fingerprint="0" * 16,
    ).save(tmp_path / "g.safetensors")
    assert main(argv[:-2] + ["--features", str(other_weights), "--out", str(tmp_path / "y")]) == 2
    assert "features were extracted with 'tf_efficientnet_lite0' weights 'random:1'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # refused before any output

    # Features of the selected frames, made by the same network and weights, are inverted as given.
    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(32, 32))
    clip = read_video(tiny_mp4, start=2, stop=9, stride=2, size=32)
    given = extract_video_features(target, clip, "blocks.2").save(tmp_path / "clip.safetensors")
    assert main(argv[:-2] + ["--features", str(given), "--no-mp4", "--out", str(tmp_path / "z")]) == 0
    z = json.loads((tmp_path / "z" / "metrics.json").read_text())
    assert [r["frame"] for r in z["frames"]] == [2, 4, 6, 8] and z["config"]["features"] != "extracted"
    assert [r["psnr"] for r in z["frames"]] == pytest.approx([r["psnr"] for r in metrics["frames"]], abs=1e-6)
