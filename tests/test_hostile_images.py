"""Image files built to exhaust memory or to be misread (issue 34, items 3 and 7).

A 500 KB PNG of 13000 x 13000 px and a 3 KB PNG of 1 x 1,000,000 px are read under an address-space limit
(``RLIMIT_AS``, as ``prlimit --as`` sets it), so that a regression fails fast instead of filling the machine: before
the fix they peaked at 5.6 GB and 12.9 GB resident. Images larger than 32 Mpx are decoded reduced; the reduced
decode is checked against the full one on a real photo.
"""

import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import diffinv.io
from diffinv.cli import main
from diffinv.features import FeatureSet
from diffinv.io import ImageMemoryError, load_image, sample_photo

pytestmark = pytest.mark.usefixtures("one_thread")

# Address space for one `python -m diffinv extract` of Lite0 at 32 px: importing torch maps about 3.3 GB of it; the
# image's own decode fits in the rest only when it is reduced (a full float copy of 169 Mpx is 6 GB).
ADDRESS_SPACE = 5 * 2**30


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Small files of huge images: 13000 x 13000 (one colour), 1 x 1,000,000 and 1,000,000 x 1."""
    root = tmp_path_factory.mktemp("bombs")
    Image.new("RGB", (13000, 13000), (120, 30, 200)).save(root / "huge.png")
    Image.new("RGB", (1, 1_000_000), (10, 200, 30)).save(root / "tall.png")
    Image.new("RGB", (1_000_000, 1), (10, 200, 30)).save(root / "wide.png")
    return root


def run_limited(*argv: str) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, preexec_fn=limit)


@pytest.mark.hostile("image-huge-dimensions", "image-extreme-aspect")
def test_small_files_of_huge_images_are_read_within_the_address_space(bombs, tmp_path):
    files = [str(bombs / name) for name in ("huge.png", "tall.png", "wide.png")]
    out = tmp_path / "f.safetensors"
    done = run_limited("-m", "diffinv", "extract", *files, "--layer", "blocks.1", "--size", "32", "-o", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    fs = FeatureSet.load(out)
    assert fs.features.shape == (3, 24, 8, 8) and fs.sources == files
    # what was read is the image's own colour, at the asked size (in a second limited process: no 12 GB here)
    code = "import sys, diffinv.io as io; [print(*io.load_image(f, 32).mean((1, 2)).tolist()) for f in sys.argv[1:]]"
    done = run_limited("-c", code, *files)
    assert done.returncode == 0, done.stderr[-2000:]
    means = np.array([line.split() for line in done.stdout.splitlines()], dtype=float)
    np.testing.assert_allclose(means, np.array([(120, 30, 200), (10, 200, 30), (10, 200, 30)]) / 255, atol=1e-3)


@pytest.mark.hostile("image-huge-dimensions")
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("size", [32, (40, 24), (24, 40)])
@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
def test_a_reduced_decode_is_the_full_decode(tmp_path, monkeypatch, suffix, size, orientation):
    """The reduced path (forced here on a 512 x 416 photo) keeps the part of the image that the full path keeps,
    upright when the file says it is stored rotated or mirrored: within 33 dB (35-47 dB measured)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"astronaut{suffix}"
    Image.fromarray(sample_photo("astronaut")[:, 96:]).save(path, exif=exif.tobytes(), quality=95)
    full = load_image(path, size)
    monkeypatch.setattr(diffinv.io.images, "_LARGE", 1000)
    reduced = load_image(path, size)
    assert reduced.shape == full.shape == (3, *(size if isinstance(size, tuple) else (size, size)))
    psnr = -10 * torch.log10(((full - reduced) ** 2).mean()).item()
    assert psnr > 33, psnr


@pytest.mark.hostile("image-decode-memory")
def test_an_image_that_does_not_fit_is_refused_from_its_header(capsys, bombs, tmp_path, monkeypatch):
    monkeypatch.setattr(diffinv.io.decoding, "available_host_memory", lambda: 200 * 2**20)
    with pytest.raises(
        ImageMemoryError,
        match=r"huge\.png' is 13000 x 13000 pixels \(RGB\): reading it needs an "
        r"estimated \d+ MiB of memory, but only 200 MiB is available",
    ):
        load_image(bombs / "huge.png", 32)
    out = tmp_path / "f.safetensors"
    code = main(["extract", str(bombs / "huge.png"), "--layer", "blocks.1", "--size", "32", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "huge.png" in err and "200 MiB is available" in err, err
    assert not out.exists()
    assert load_image(bombs / "tall.png", 32).shape == (3, 32, 32)  # a reduced read that fits still goes


@pytest.mark.hostile("image-int32-negative")
@pytest.mark.parametrize("dtype", [np.int32, np.int16])
def test_signed_integer_images_are_read_by_their_range(tmp_path, dtype):
    ramp = np.linspace(-1000, 1000, 32 * 48).reshape(32, 48).astype(dtype)
    path = tmp_path / "signed.tif"
    Image.fromarray(ramp).save(path)
    image = load_image(path)
    assert image.shape == (3, 32, 48)
    expected = torch.from_numpy((ramp.astype(np.float32) + 1000) / 2000)
    torch.testing.assert_close(image[0], expected, atol=1e-6, rtol=0)  # a ramp from black to white, not all white


@pytest.mark.hostile("env-variable-typo")
def test_a_misspelt_environment_variable_is_named_with_the_right_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFINV_MAX_IMAGE_PIXEL", "0")
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "DIFFINV_MAX_IMAGE_PIXEL='0' is not one diffinv reads; did you mean DIFFINV_MAX_IMAGE_PIXELS?" in err, err
    assert not out.exists()
    monkeypatch.delenv("DIFFINV_MAX_IMAGE_PIXEL")
    monkeypatch.setenv("DIFFINV_" + "X" * 5000, "1")
    code = main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err) < 600 and "is not one diffinv reads" in err, err
