"""Every bad input a user can type gets a clear error before any work, and nothing half-written.

Each case asserts: a non-zero exit (2 for usage errors), no traceback, a message that names
the argument (and its value), and an output folder that holds nothing new. Most cases call
``diffinv.cli.main`` in this process (fast); a few run ``python -m diffinv`` as a real
subprocess, the way a user does (no traceback at process level, Ctrl-C -> exit 130).
"""

import json
import os
import re
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
def files(tmp_path_factory, photos_64px, lite0_64px):
    root = tmp_path_factory.mktemp("inputs")
    photo = save_image(photos_64px[0], root / "photo.png")
    feats = FeatureSet.extract(lite0_64px, photos_64px[:1], "blocks.1", sources=[str(photo)]).save(
        root / "f.safetensors"
    )
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
    assert_usage_error(
        capsys, ["bench", "--out", bad, "--methods", "pixel", "--iterations", "1"], "`--out`", bad, "existing file"
    )
    assert_usage_error(
        capsys, ["invert", files["feats"], "--method", "pixel", "--out", bad], "`--out`", "existing file"
    )
    assert_usage_error(
        capsys, ["extract", files["photo"], "--layer", "blocks.1", "-o", str(files["root"])], "`--out`", "is a folder"
    )


def test_unwritable_output_folder(capsys, files):
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "pixel", "--out", "/proc/diffinv/out"],
        "`--out`",
        "/proc/diffinv/out",
        "cannot write",
    )
    assert_usage_error(capsys, ["demo", "--out", files["file"] + "/sub"], "`--out`", "is a file")


# ---------------------------------------------------------------------- numbers and choices
@pytest.mark.parametrize(
    "argv, needle",
    [
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
    ],
)
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
        assert_usage_error(
            capsys,
            ["train-decoder", "--layer", "blocks.1", "--images", "x", "--device", "cuda", "--out", out],
            "`--device` 'cuda'",
        )
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
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "mapper", "--mapper", decoder, "--model", "tiny", "--out", out],
        "this is a decoder folder; use --decoder",
    )
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "decoder", "--decoder", mapper, "--out", out],
        "this is a mapper folder; use --mapper",
    )
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "diffusion", "--model", mapper, "--out", out],
        "`--model`",
        "this is a mapper folder; use `--mapper`",
    )
    assert_usage_error(
        capsys,
        ["demo", "--model", tmp_path / "nope", "--out", out],
        "`--model`",
        "is not a folder",
        "tiny, sd15, sd-turbo",
    )
    (tmp_path / "empty").mkdir()
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "diffusion", "--model", tmp_path / "empty", "--out", out],
        "`--model`",
        "has no model_index.json",
    )
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
    assert_usage_error(
        capsys,
        ["extract", big, "--layer", "blocks.1", "-o", tmp_path / "f.safetensors"],
        "big.png",
        "decompression-bomb limit",
        "DIFFINV_MAX_IMAGE_PIXELS",
    )
    assert not (tmp_path / "f.safetensors").exists()
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "0")  # the explicit opt-in
    assert load_image(big).shape == (3, 400, 400)


def test_extract_takes_uint8_and_half_images_and_refuses_others(lite0_64px, photos_64px):
    reference = FeatureSet.extract(lite0_64px, photos_64px[:1], "blocks.1").features
    as_uint8 = (photos_64px[:1] * 255).round().to(torch.uint8)

    def close(a):  # 8-bit / half-precision rounding of the pixels moves the features by a few %
        return ((a - reference).norm() / reference.norm()).item() < 0.05

    assert close(FeatureSet.extract(lite0_64px, as_uint8, "blocks.1").features)
    half = FeatureSet.extract(lite0_64px, photos_64px[:1].half(), "blocks.1").features
    assert half.dtype == torch.float32 and close(half)
    with pytest.raises(ValueError, match="`images` has dtype torch.int64"):
        FeatureSet.extract(lite0_64px, as_uint8.long(), "blocks.1")
    with pytest.raises(
        ValueError,
        match=r"`images` must hold finite values in \[0, 1\], got min \d+ and max \d+; divide uint8-range floats by 255",
    ):
        FeatureSet.extract(lite0_64px, as_uint8.float(), "blocks.1")
    with pytest.raises(ValueError, match=r"`images` is an empty batch"):
        FeatureSet.extract(lite0_64px, photos_64px[:0], "blocks.1")


# ---------------------------------------------------------------------- feature files
def _rewrite_metadata(src, dst, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as f:
        metadata, tensor = dict(f.metadata()), f.get_tensor("features")
    change(metadata)
    save_file({"features": tensor}, str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.pop("shape"), "has no 'shape' in its metadata"),
        (lambda m: m.update(input_size="not json"), "metadata 'input_size' = 'not json' is not valid JSON"),
        (
            lambda m: m.update(input_size="[0, 0]"),
            "`input_size` must be (height, width), two positive integers, got [0, 0]",
        ),
    ],
)
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
    assert_usage_error(
        capsys,
        ["extract", files["photo"], "--target", "resnet18", "--layer", "layer2", "-o", tmp_path / "f.safetensors"],
        "'resnet18'",
        "not on this machine",
        "--weights PATH",
    )
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------- Ctrl-C, as a real process
def test_ctrl_c_keeps_finished_work_and_exits_130(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "diffinv",
        "bench",
        "--layers",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "blocks.6",
        "--methods",
        "pixel",
        "--num-images",
        "1",
        "--size",
        "32",
        "--seeds",
        "0",
        "--iterations",
        "1500",
        "--out",
        str(out),
    ]
    # SIGINT as a terminal has it, even when the tests themselves run in a background job (which ignores it)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffinv",
            "invert",
            str(tmp_path / "missing.safetensors"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "diffinv invert: error: feature file" in result.stderr and "missing.safetensors" in result.stderr


# ---------------------------------------------------------------------- video, training
@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["video", "clip.mp4", "--layer", "blocks.1", "--temporal-weight", "-5", "--out", "x"],
            "argument --temporal-weight: expected a finite number >= 0, got -5",
        ),
        (["video", "clip.mp4", "--layer", "blocks.1", "--window", "0", "--out", "x"], "argument --window"),
        (["video", "clip.mp4", "--layer", "blocks.1", "--stride", "0", "--out", "x"], "argument --stride"),
        (["video", "clip.mp4", "--layer", "blocks.1", "--frames", "0", "--out", "x"], "argument --frames"),
        (["train-decoder", "--layer", "blocks.1", "--images", "x", "--lr", "0", "--out", "x"], "argument --lr"),
        (
            ["train-decoder", "--layer", "blocks.1", "--images", "x", "--batch-size", "0", "--out", "x"],
            "argument --batch-size",
        ),
        (
            ["train-decoder", "--layer", "blocks.1", "--images", "x", "--val-fraction", "1.5", "--out", "x"],
            "argument --val-fraction",
        ),
    ],
)
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
    assert_usage_error(
        capsys,
        ["video", tmp_path / "broken.mp4", "--layer", "blocks.1", "--iterations", "1", "--out", out],
        "broken.mp4",
        "could not be read as a video",
    )
    assert not out.exists() or not any(out.iterdir())


def test_training_without_data_or_with_bad_out(capsys, files, tmp_path):
    assert_usage_error(
        capsys, ["train-decoder", "--layer", "blocks.1", "--out", tmp_path / "t"], "no training data", "--images"
    )
    assert_usage_error(
        capsys,
        ["train-decoder", "--layer", "blocks.1", "--images", files["photo"], "--out", files["file"]],
        "`--out`",
        "existing file",
    )
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------------- Python API ranges
def test_python_api_ranges(lite0_64px, photos_64px):
    from diffinv.pipelines import load_pipeline

    target = single_layer_target()
    feats = FeatureSet.extract(target, photos_64px[:1], "blocks.1")
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
            pipe(feats, num_inference_steps=1, iterations=1, output_type="pt", **kwargs)
    with pytest.raises(ValueError, match="`input_size` must be"):
        pipe(feats.features, input_size="64", num_inference_steps=1, iterations=1, output_type="pt")
    with pytest.raises(ValueError, match="`features` holds no feature maps"):
        pipe(feats.features[:0], height=64, width=64, num_inference_steps=1, iterations=1, output_type="pt")


# ---------------------------------------------------------------------- memory, checked before any work (issue 22)
def test_memory_refused_before_images_are_loaded(capsys, tmp_path, monkeypatch):
    import diffinv.cli.common.from_args as common
    import diffinv.resources as resources

    def no_images(*args, **kwargs):
        raise AssertionError("the images were loaded before the memory check")

    monkeypatch.setattr(common, "load_dataset", no_images)
    monkeypatch.setattr(common, "load_image_files", no_images)
    monkeypatch.setattr(resources, "_host_available", lambda: 10 * 2**20)
    out = tmp_path / "out"
    err = assert_usage_error(
        capsys,
        ["demo", "--size", "64", "--layers", "blocks.1", "--methods", "pixel", "--workers", "1", "--out", out],
        "the job needs an estimated",
        "of memory at its peak (",
        "target activations",
        "but only 10.0 MiB is available on cpu",
        "Use a smaller image size",
    )
    assert not out.exists(), err


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--size", "100000"],
        ["demo", "--size", "8000"],
        ["bench", "--size", "8000", "--methods", "pixel", "--layers", "blocks.1"],
    ],
)
def test_huge_sizes_are_refused_with_the_estimate(capsys, tmp_path, argv):
    out = tmp_path / "out"
    err = assert_usage_error(
        capsys,
        [*argv, "--out", out],
        "the job needs an estimated",
        "GiB",
        "is available on cpu" if not torch.cuda.is_available() else "is available on",
    )
    assert not out.exists(), err


def test_memory_refusal_in_invert_video_and_the_api(capsys, files, tmp_path, monkeypatch):
    import diffinv.resources as resources
    from diffinv.inverters import memory_costs
    from diffinv.resources import InsufficientMemoryError, check_job_memory

    monkeypatch.setattr(resources, "_host_available", lambda: 2**20)
    out = tmp_path / "out"
    assert_usage_error(
        capsys,
        ["invert", files["feats"], "--method", "dip", "--out", out],
        "needs an estimated",
        "but only 1.0 MiB is available",
    )
    assert_usage_error(capsys, ["video", "clip.mp4", "--layer", "blocks.1", "--out", out], "needs an estimated")
    assert_usage_error(
        capsys,
        ["extract", files["photo"], "--layer", "blocks.1", "-o", tmp_path / "f.safetensors"],
        "needs an estimated",
    )
    assert not out.exists() and not (tmp_path / "f.safetensors").exists()
    with pytest.raises(InsufficientMemoryError, match=r"needs an estimated .* but only 1\.0 MiB is available on cpu"):
        check_job_memory("tf_efficientnet_lite0", "blocks.1", 64, methods=memory_costs(["pixel"]))


def test_memory_estimate_is_modest_for_the_demo_and_grows_with_the_job():
    from diffinv.inverters import memory_costs
    from diffinv.jobs.bench import DEFAULT_BATCH_SIZE
    from diffinv.resources import available_memory, check_memory, estimate_memory
    from diffinv.targets import DEFAULT_LAYERS

    layers = DEFAULT_LAYERS["tf_efficientnet_lite0"]
    demo = estimate_memory(
        "tf_efficientnet_lite0",
        layers,
        128,
        images=4,
        batch_size=DEFAULT_BATCH_SIZE,
        methods=memory_costs(["pixel", "dip"]),
    )
    assert 100 * 2**20 < demo.total < 1.5 * 2**30, demo.describe()  # measured: ~0.4 GB for a 256 px batch of 4
    check_memory(demo, "cpu")
    assert available_memory("cpu") > 0
    bigger = estimate_memory(
        "tf_efficientnet_lite0",
        layers,
        256,
        images=4,
        batch_size=DEFAULT_BATCH_SIZE,
        methods=memory_costs(["pixel", "dip"]),
    )
    assert 3.5 < bigger.compute_bytes / demo.compute_bytes < 4.5  # activations scale with the pixels
    shallow = estimate_memory("tf_efficientnet_lite0", ["blocks.1"], 128, images=4, methods=memory_costs(["pixel"]))
    assert shallow.compute["target activations"] < demo.compute["target activations"]
    sd = estimate_memory(
        "tf_efficientnet_lite0", ["blocks.1"], 512, methods=memory_costs(["diffusion"], {"model": None})
    )
    tiny = estimate_memory(
        "tf_efficientnet_lite0", ["blocks.1"], 512, methods=memory_costs(["diffusion"], {"model": "pipelines/tiny"})
    )
    assert sd.compute["diffusion weights"] > 4e9 > 2e8 > tiny.compute["diffusion weights"]
    two = estimate_memory(
        "tf_efficientnet_lite0", ["blocks.1"], 128, images=4, methods=memory_costs(["pixel"]), processes=2
    )
    assert two.compute_bytes == 2 * sum(two.compute.values())


def test_dip_memory_constant_covers_the_generator():
    from diffinv.inverters import DIPInverter
    from diffinv.inverters.dip import DIP_BYTES_PER_PIXEL
    from diffinv.models import SkipGenerator
    from diffinv.resources import activation_bytes

    channels = DIPInverter(single_layer_target()).config.channels
    with torch.device("meta"):
        net = SkipGenerator(1, 32, channels)
    z = torch.zeros(1, 32, 64, 64, device="meta")
    measured = activation_bytes(net, z) + 2 * z.numel() * 4  # plus the input noise and its noisy copy
    assert measured / (64 * 64) < DIP_BYTES_PER_PIXEL < 4 * measured / (64 * 64)


# ---------------------------------------------------------------------- EXIF orientation (issue 22)
@pytest.mark.parametrize(
    "orientation, shape, corner",
    [
        (1, (3, 20, 40), (0, 0)),  # as stored: the red block at the top left
        (3, (3, 20, 40), (-1, -1)),  # rotated 180: bottom right
        (6, (3, 40, 20), (0, -1)),  # rotated 90 clockwise: top right
        (8, (3, 40, 20), (-1, 0)),  # rotated 90 counter-clockwise: bottom left
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, shape, corner):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # a block, so that JPEG's blur keeps its corner red
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    image = load_image(path)
    assert tuple(image.shape) == shape
    red = image[:, corner[0], corner[1]]
    assert red[0] > 0.8 and red[1] < 0.2 and red[2] < 0.2, (orientation, red)
    assert image[0].sum() < 0.1 * image[0].numel()  # one red block, nothing else


# ---------------------------------------------------------------------- environment, checked at start (issue 22)
def test_bad_environment_variable_fails_at_start(capsys, tmp_path, monkeypatch, files):
    from diffinv.io import check_environment

    out = tmp_path / "out"
    for value in ("abc", "-5", "1e9"):
        monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", value)
        assert_usage_error(
            capsys,
            ["demo", "--out", out],
            f"environment variable DIFFINV_MAX_IMAGE_PIXELS={value!r}",
            "expected an integer >= 0",
            "0 for no limit",
        )
        with pytest.raises(ValueError, match=f"DIFFINV_MAX_IMAGE_PIXELS={value!r}: expected an integer >= 0"):
            load_image(files["photo"])
        with pytest.raises(ValueError, match="DIFFINV_MAX_IMAGE_PIXELS"):
            check_environment()
    assert not out.exists()


def test_a_run_never_fails_on_its_own_outputs(capsys, tmp_path, monkeypatch):
    """A limit below the size of the run's images: the images come from the built-in set (not files), and the
    run reads its own reconstructions back for the grid: it must finish, not fail after its work."""
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXELS", "100")
    out = tmp_path / "bench"
    code, err = run(
        capsys,
        "bench",
        "--layers",
        "blocks.1",
        "--methods",
        "pixel",
        "--num-images",
        "1",
        "--size",
        "32",
        "--seeds",
        "0",
        "--iterations",
        "1",
        "--out",
        out,
    )
    assert code == 0, err
    assert (out / "grid.png").is_file() and (out / "results.json").is_file()


def test_a_planted_larger_image_is_refused_as_an_own_output(tmp_path):
    big = tmp_path / "frame_00000.png"
    Image.new("RGB", (64, 64)).save(big)
    assert load_image(big, max_pixels=64 * 64).shape == (3, 64, 64)
    with pytest.raises(
        ValueError,
        match=r"frame_00000.png' is larger than expected \(64 x 64 = 4096 pixels; at most "
        r"1024 pixels\); it is not the file this run wrote",
    ):
        load_image(big, max_pixels=32 * 32)


# ---------------------------------------------------------------------- messages (issue 22)
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_special_files_are_not_regular_files(capsys, files, tmp_path, kind):
    if kind == "fifo":
        special, what = tmp_path / "pipe.safetensors", "a FIFO (named pipe)"
        os.mkfifo(special)
    elif kind == "device":
        special, what = "/dev/zero", "a device"
    else:
        special, what = tmp_path / "dir.safetensors", "a folder"
        special.mkdir()
    out = tmp_path / "out"
    assert_usage_error(
        capsys,
        ["invert", special, "--method", "pixel", "--out", out],
        f"feature file '{special}' is not a regular file (it is {what}); expected a file on disk.",
    )
    assert_usage_error(
        capsys,
        ["extract", files["photo"], "--layer", "blocks.1", "--weights", special, "-o", tmp_path / "f.safetensors"],
        f"`weights` file '{special}' is not a regular file",
    )
    assert not out.exists() and not (tmp_path / "f.safetensors").exists()
    with pytest.raises(ValueError, match=f"image file '{special}' is not a regular file"):
        load_image(special)
    if kind == "fifo":
        image = tmp_path / "pipe.png"
        os.mkfifo(image)
        assert_usage_error(
            capsys,
            ["extract", image, "--layer", "blocks.1", "-o", tmp_path / "f.safetensors"],
            f"image file '{image}' is not a regular file (it is a FIFO (named pipe))",
        )


def test_a_metadata_error_has_one_prefix(capsys, files, tmp_path):
    broken = _rewrite_metadata(
        files["feats"], tmp_path / "broken.safetensors", lambda m: m.update(input_size="not json")
    )
    err = assert_usage_error(
        capsys,
        ["invert", broken, "--method", "pixel", "--out", tmp_path / "out"],
        f"error: feature file '{broken}': metadata 'input_size' = 'not json' is not valid JSON",
    )
    assert err.count("feature file") == 1, err
    with pytest.raises(ValueError, match="^feature file .*broken.safetensors': metadata 'input_size'") as info:
        FeatureSet.load(broken)
    assert str(info.value).count("feature file") == 1


@pytest.mark.parametrize(
    "name, content, needle",
    [
        (
            "weights.txt",
            b"random text here\n",
            r"is not a state dict \(torch.load\(weights_only=True\) cannot read it\)",
        ),
        (
            "weights.pt",
            b"S'\x00\x01 not a pickle",
            r"is not a state dict \(torch.load\(weights_only=True\) cannot read it\)",
        ),
        (
            "weights.safetensors",
            b"hello world, not safetensors",
            r"is not a state dict \(safetensors cannot read it\)",
        ),
        ("list.pt", None, "holds a list, not a state dict"),
        ("nested.pt", {"model": {"w": 1}}, "holds a dict that is not name -> tensor, not a state dict"),
    ],
)
def test_weights_that_are_not_a_state_dict(capsys, files, tmp_path, name, content, needle):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([torch.zeros(2)] if content is None else content, path)
    expected = "expected a state dict: a .safetensors file, or a file of tensors saved by `torch.save"
    with pytest.raises(ValueError, match=f"`weights` file '{path}' {needle}; {re.escape(expected)}"):
        TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", weights=str(path))
    err = assert_usage_error(
        capsys,
        ["extract", files["photo"], "--layer", "blocks.1", "--weights", path, "-o", tmp_path / "f.safetensors"],
        f"`weights` file '{path}'",
        "not a state dict",
    )
    assert "Unsupported operand" not in err and "IndexError" not in err and "hello" not in err


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    from diffinv.io import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    target = tmp_path / "out" / "recon.png"
    with pytest.raises(OSError, match=f"No space left on device: could not write '{target}'; free space") as info:
        save_image(torch.zeros(3, 8, 8), target)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(OSError, match="could not write '.*metrics.json'"):
        write_json(tmp_path / "out" / "metrics.json", {"a": 1})
    assert os.listdir(tmp_path / "out") == []  # no temporary file left behind
    monkeypatch.setattr(
        type(tmp_path), "write_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
    )
    with pytest.raises(PermissionError):  # other errors pass through unchanged
        write_json(tmp_path / "out" / "metrics.json", {"a": 1})
