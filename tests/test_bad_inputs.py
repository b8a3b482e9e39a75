"""Every bad input a user can type gets a clear error before any work, and nothing half-written.

Each case asserts: a non-zero exit (2 for usage errors), no traceback, a message that names
the argument (and its value), and an output folder that holds nothing new. Most cases call
``diffinv.cli.main`` in this process (fast); a few run ``python -m diffinv`` as a real
subprocess, the way a user does (no traceback at process level, Ctrl-C -> exit 130).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from diffinv.cli import main
from diffinv.features import FeatureSet
from diffinv.inverters import DIPInverter, PixelInverter
from diffinv.io import load_image, save_image
from diffinv.targets import TargetNetwork

pytestmark = pytest.mark.usefixtures("one_thread")


def single_layer_target():
    """The real EfficientNet-Lite0 with the single layer blocks.1, 64 x 64."""
    return TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=(64, 64))


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_photos, lite0):
    root = tmp_path_factory.mktemp("inputs")
    photo = save_image(small_photos[0], root / "photo.png")
    feats = FeatureSet.extract(lite0, small_photos[:1], "blocks.1", sources=[str(photo)]).save(root / "f.safetensors")
    (root / "a_file").write_text("x")
    return {"root": root, "photo": str(photo), "feats": str(feats), "file": str(root / "a_file")}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def assert_usage_error(capsys, argv, *needles, out=None):
    before = sorted(os.listdir(out)) if out is not None and os.path.isdir(out) else None
    code, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith(f"diffinv {argv[0]}: error:") or f"diffinv {argv[0]}: error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    if out is not None:
        after = sorted(os.listdir(out)) if os.path.isdir(out) else None
        assert after == before, f"{out} changed: {before} -> {after}"
    return err


# ---------------------------------------------------------------------- output locations
def test_out_is_an_existing_file(capsys, files):
    bad = files["file"]
    assert_usage_error(capsys, ["bench", "--out", bad, "--methods", "pixel", "--iterations", "1"], "`--out`", bad,
                       "existing file")
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "pixel", "--out", bad], "`--out`", "existing file")
    assert_usage_error(capsys, ["extract", files["photo"], "--layer", "blocks.1", "-o", str(files["root"])],
                       "`--out`", "is a folder")


def test_unwritable_output_folder(capsys, files):
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "pixel", "--out", "/proc/diffinv/out"],
                       "`--out`", "/proc/diffinv/out", "cannot write")
    assert_usage_error(capsys, ["demo", "--out", files["file"] + "/sub"], "`--out`", "is a file")


# ---------------------------------------------------------------------- numbers and choices
@pytest.mark.parametrize("argv, needle", [
    (["demo", "--size", "0"], "argument --size: expected a positive integer (>= 1), got 0"),
    (["bench", "--size", "-3", "--out", "x"], "argument --size: expected a positive integer (>= 1), got -3"),
    (["extract", "p.png", "--layer", "blocks.1", "--size", "0", "-o", "f.safetensors"], "argument --size"),
    (["demo", "--num-images", "0"], "argument --num-images: expected a positive integer (>= 1), got 0"),
    (["demo", "--num-images", "-4"], "argument --num-images"),
    (["demo", "--steps", "0"], "argument --steps: expected a positive integer (>= 1), got 0"),
    (["demo", "--iterations", "0"], "argument --iterations"),
    (["demo", "--strength", "2"], "argument --strength: expected a number in [0, 1], got 2"),
    (["demo", "--methods", "nope"], "argument --methods: invalid choice: 'nope'"),
    (["train-decoder", "--layer", "blocks.1", "--size", "0", "--out", "x"], "argument --size"),
    (["video", "clip.mp4", "--layer", "blocks.1", "--size", "0", "--out", "x"], "argument --size"),
])
def test_bad_numbers_are_argparse_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and "Traceback" not in err


def test_devices(capsys, tmp_path):
    out = tmp_path / "d"
    assert_usage_error(capsys, ["demo", "--device", "foo", "--out", out], "`--device` 'foo'", "expected auto, cpu")
    assert not out.exists()
    if not torch.cuda.is_available():
        assert_usage_error(capsys, ["demo", "--device", "cuda", "--out", out], "`--device` 'cuda'", "no CUDA GPU")
        assert_usage_error(capsys, ["train-decoder", "--layer", "blocks.1", "--images", "x", "--device", "cuda",
                                    "--out", out], "`--device` 'cuda'")
    assert not out.exists()


# ---------------------------------------------------------------------- learned-model folders
def test_a_folder_of_the_wrong_kind_is_named(capsys, files, tmp_path):
    decoder = tmp_path / "decoder"
    decoder.mkdir()
    (decoder / "config.json").write_text(json.dumps({"_class_name": "UpconvNet", "layer": "blocks.1"}))
    mapper = tmp_path / "mapper"
    mapper.mkdir()
    (mapper / "config.json").write_text(json.dumps({"_class_name": "FeatureMapper", "layer": "blocks.1"}))
    out = tmp_path / "out"
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "mapper", "--mapper", decoder, "--model", "tiny",
                                "--out", out], "this is a decoder folder; use --decoder")
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "decoder", "--decoder", mapper, "--out", out],
                       "this is a mapper folder; use --mapper")
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "diffusion", "--model", mapper, "--out", out],
                       "`--model`", "this is a mapper folder; use --mapper")
    assert_usage_error(capsys, ["demo", "--model", tmp_path / "nope", "--out", out], "`--model`", "is not a folder",
                       "tiny, sd15, sd-turbo")
    (tmp_path / "empty").mkdir()
    assert_usage_error(capsys, ["invert", files["feats"], "--method", "diffusion", "--model", tmp_path / "empty",
                                "--out", out], "`--model`", "has no model_index.json")
    assert not out.exists()


# ---------------------------------------------------------------------- images
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    assert (image >= 0.999).float().mean() < 0.01 and abs(image.mean().item() - 0.5) < 0.01


def test_decompression_bomb_is_a_clear_error(capsys, tmp_path, monkeypatch, files):
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 400)).save(big)
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "1000")
    assert_usage_error(capsys, ["extract", big, "--layer", "blocks.1", "-o", tmp_path / "f.safetensors"],
                       "big.png", "decompression-bomb limit", "DIFFINV_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "f.safetensors").exists()
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "0")  # the explicit opt-in
    assert load_image(big).shape == (3, 400, 400)


def test_extract_takes_uint8_and_half_images_and_refuses_others(lite0, small_photos):
    reference = FeatureSet.extract(lite0, small_photos[:1], "blocks.1").features
    as_uint8 = (small_photos[:1] * 255).round().to(torch.uint8)
    def close(a):  # 8-bit / half-precision rounding of the pixels moves the features by a few %
        return ((a - reference).norm() / reference.norm()).item() < 0.05

    assert close(FeatureSet.extract(lite0, as_uint8, "blocks.1").features)
    half = FeatureSet.extract(lite0, small_photos[:1].half(), "blocks.1").features
    assert half.dtype == torch.float32 and close(half)
    with pytest.raises(ValueError, match="`images` has dtype torch.int64"):
        FeatureSet.extract(lite0, as_uint8.long(), "blocks.1")
    with pytest.raises(ValueError, match=r"`images` must hold finite values in \[0, 1\], got min \d+ and max \d+; divide uint8-range floats by 255"):
        FeatureSet.extract(lite0, as_uint8.float(), "blocks.1")
    with pytest.raises(ValueError, match=r"`images` is an empty batch"):
        FeatureSet.extract(lite0, small_photos[:0], "blocks.1")


# ---------------------------------------------------------------------- feature files
def _rewrite_metadata(src, dst, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as f:
        metadata, tensor = dict(f.metadata()), f.get_tensor("features")
    change(metadata)
    save_file({"features": tensor}, str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.pop("shape"), "has no 'shape' in its metadata"),
    (lambda m: m.update(input_size="not json"), "metadata 'input_size' = 'not json' is not valid JSON"),
    (lambda m: m.update(input_size="[0, 0]"), "`input_size` must be (height, width), two positive integers, got [0, 0]"),
])
def test_broken_feature_metadata(capsys, files, tmp_path, change, needle):
    broken = _rewrite_metadata(files["feats"], tmp_path / "broken.safetensors", change)
    out = tmp_path / "out"
    assert_usage_error(capsys, ["invert", broken, "--method", "pixel", "--out", out], "broken.safetensors", needle)
    assert not out.exists()


def test_featureset_arguments():
    with pytest.raises(ValueError, match="no feature maps"):
        FeatureSet(torch.zeros(0, 24, 8, 8), "tf_efficientnet_lite0", "blocks.1", (32, 32))
    with pytest.raises(ValueError, match=r"`input_size` must be \(height, width\), two positive integers, got '64'"):
        FeatureSet(torch.zeros(1, 24, 8, 8), "tf_efficientnet_lite0", "blocks.1", "64")


def test_python_api_refuses_empty_batches():
    target = single_layer_target()
    empty = torch.zeros(0, 24, 16, 16)
    for cls in (PixelInverter, DIPInverter):
        with pytest.raises(ValueError, match="`features` holds no feature maps"):
            cls(target, iterations=1).invert(empty, (64, 64), progress=False)


# ---------------------------------------------------------------------- networks offline
def test_timm_name_without_cached_weights_fails_at_once(capsys, files, tmp_path):
    start = time.perf_counter()
    assert_usage_error(capsys, ["extract", files["photo"], "--target", "resnet18", "--layer", "layer2",
                                "-o", tmp_path / "f.safetensors"], "'resnet18'", "not on this machine",
                       "--weights PATH")
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------- Ctrl-C, as a real process
def test_ctrl_c_keeps_finished_work_and_exits_130(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "diffinv", "bench", "--layers", "blocks.1", "blocks.2", "blocks.4", "blocks.6",
           "--methods", "pixel", "--num-images", "1", "--size", "32", "--seeds", "0", "--iterations", "1500",
           "--out", str(out)]
    # SIGINT as a terminal has it, even when the tests themselves run in a background job (which ignores it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "records.jsonl").is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "run the same command again to resume" in err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert records and all((out / r["file"]).is_file() for r in records)


def test_process_level_usage_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "diffinv", "invert", str(tmp_path / "missing.safetensors"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "diffinv invert: error: feature file" in result.stderr and "missing.safetensors" in result.stderr


# ---------------------------------------------------------------------- video, training
@pytest.mark.parametrize("argv, needle", [
    (["video", "clip.mp4", "--layer", "blocks.1", "--temporal-weight", "-5", "--out", "x"],
     "argument --temporal-weight: expected a finite number >= 0, got -5"),
    (["video", "clip.mp4", "--layer", "blocks.1", "--window", "0", "--out", "x"], "argument --window"),
    (["video", "clip.mp4", "--layer", "blocks.1", "--stride", "0", "--out", "x"], "argument --stride"),
    (["video", "clip.mp4", "--layer", "blocks.1", "--frames", "0", "--out", "x"], "argument --frames"),
    (["train-decoder", "--layer", "blocks.1", "--images", "x", "--lr", "0", "--out", "x"], "argument --lr"),
    (["train-decoder", "--layer", "blocks.1", "--images", "x", "--batch-size", "0", "--out", "x"],
     "argument --batch-size"),
    (["train-decoder", "--layer", "blocks.1", "--images", "x", "--val-fraction", "1.5", "--out", "x"],
     "argument --val-fraction"),
])
def test_bad_video_and_training_numbers(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and "Traceback" not in err


def test_corrupt_video_is_a_clear_error(capsys, tmp_path):
    from diffinv.datasets import sample_video_path

    data = bytearray(sample_video_path("bikes.mp4").read_bytes()[:20000])  # truncated ...
    data[100:164] = bytes(range(192, 256))  # ... and its header overwritten with non-UTF-8 bytes
    (tmp_path / "broken.mp4").write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_usage_error(capsys, ["video", tmp_path / "broken.mp4", "--layer", "blocks.1", "--iterations", "1",
                                "--out", out], "broken.mp4", "could not be read as a video")
    assert not out.exists() or not any(out.iterdir())


def test_training_without_data_or_with_bad_out(capsys, files, tmp_path):
    assert_usage_error(capsys, ["train-decoder", "--layer", "blocks.1", "--out", tmp_path / "t"], "no training data",
                       "--images")
    assert_usage_error(capsys, ["train-decoder", "--layer", "blocks.1", "--images", files["photo"],
                                "--out", files["file"]], "`--out`", "existing file")
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------- Python API ranges
def test_python_api_ranges(lite0, small_photos):
    from diffinv.pipelines import load_pipeline

    target = single_layer_target()
    feats = FeatureSet.extract(target, small_photos[:1], "blocks.1")
    with pytest.raises(ValueError, match="`temporal_weight` must be a finite number >= 0, got -5"):
        PixelInverter(target, iterations=1, temporal_weight=-5).invert(feats, progress=False)
    with pytest.raises(ValueError, match="`learning_rate` must be a finite number >= 0"):
        DIPInverter(target, iterations=1, learning_rate=-0.1).invert(feats, progress=False)
    pipe = load_pipeline("tiny", target=target)
    for kwargs, needle in [
        ({"strength": 2.0}, r"`strength` must be a number in \(0, 1\], got 2.0"),
        ({"temporal_weight": -1.0}, "`temporal_weight` must be a finite number >= 0"),
        ({"guidance_scale": float("nan")}, "`guidance_scale` must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=needle):
            pipe(feats, num_inference_steps=1, num_iterations=1, output_type="pt", **kwargs)
    with pytest.raises(ValueError, match="`input_size` must be"):
        pipe(feats.features, input_size="64", num_inference_steps=1, num_iterations=1, output_type="pt")
    with pytest.raises(ValueError, match="`features` holds no feature maps"):
        pipe(feats.features[:0], height=64, width=64, num_inference_steps=1, num_iterations=1, output_type="pt")


