"""Feature files built by hand (issue 34, items 7 and 8): what ``FeatureSet.save`` never writes is refused when the
file is read, before any inversion, with a message that names the file, the field and what was expected, and cuts a
long value short. A file without the weights' fingerprint is read, and said.
"""

import errno
import json

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import diffinv.features
from diffinv.cli import main
from diffinv.features import FeatureSet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good(lite0_64px, photos_64px, tmp_path_factory):
    """A real feature file of Lite0's blocks.1 for two photos, and its metadata, to be altered by each test."""
    fs = FeatureSet.extract(lite0_64px, photos_64px[:2], "blocks.1", sources=["a.png", "b.png"])
    path = fs.save(tmp_path_factory.mktemp("features") / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return fs, f.metadata()


def write(path, features, metadata, **changes):
    """A feature file with ``features`` and the metadata of ``good`` changed by ``changes`` (JSON-encoded, as
    :meth:`FeatureSet.save` stores every field but the target's and the layer's names)."""
    metadata = {
        **metadata,
        **{key: json.dumps(value) for key, value in changes.items()},
        "dtype": str(features.dtype).replace("torch.", ""),
        "shape": json.dumps(list(features.shape)),
    }
    save_file({"features": features}, str(path), metadata=metadata)
    return path


def invert(capsys, path, tmp_path):
    """``diffinv invert`` of ``path`` (pixel, 1 iteration): exit code and stderr; asserts no output was written."""
    out = tmp_path / "out"
    code = main(["invert", str(path), "--method", "pixel", "--iterations", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists(), err
    return code, err


@pytest.mark.hostile("features-fingerprint-null")
@pytest.mark.parametrize("how", ["null", "missing"])
def test_a_file_without_a_weights_fingerprint_is_read_and_said(capsys, good, tmp_path, how):
    fs, metadata = good
    if how == "null":
        path = write(tmp_path / "f.safetensors", fs.features, metadata, weights_fingerprint=None)
    else:
        path = write(
            tmp_path / "f.safetensors", fs.features, {k: v for k, v in metadata.items() if k != "weights_fingerprint"}
        )
    with pytest.warns(
        UserWarning,
        match=f"records no weights fingerprint \\(`weights_fingerprint` is {how}\\): the "
        "weights that made its features cannot be checked",
    ):
        loaded = FeatureSet.load(path)
    torch.testing.assert_close(loaded.features, fs.features)
    code = main(["invert", str(path), "--method", "pixel", "--iterations", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert (
        code == 0 and f"diffinv invert: warning: feature file {str(path)!r} records no weights fingerprint" in err
    ), err
    assert "warnings.warn" not in err and "UserWarning" not in err, (
        err
    )  # said as diffinv says things, not as Python does


@pytest.mark.hostile("features-not-float")
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool])
def test_integer_features_are_refused(capsys, good, tmp_path, dtype):
    fs, metadata = good
    with pytest.raises(
        ValueError, match=f"`features` has dtype {str(dtype).replace('torch.', '')}; expected floating-point features"
    ):
        FeatureSet(features=fs.features.to(dtype), target=fs.target, layer=fs.layer, input_size=fs.input_size)
    path = write(tmp_path / "f.safetensors", fs.features.to(dtype), metadata)
    code, err = invert(capsys, path, tmp_path)
    assert code == 2 and str(path) in err and "expected floating-point features" in err, err


@pytest.mark.hostile("features-bad-sources")
@pytest.mark.parametrize(
    "sources, needle",
    [
        ({"a.png": 0, "b.png": 1}, "`sources` must be a list of strings, one per item, got a dict"),
        (["a.png", 7], "`sources[1]` must be a string (a file name or label), got a int: 7"),
        (["a.png", "b\0.png"], "holds a NUL character"),
        (["a.png", "x" * 50_000_000], "is 50000000 characters long; expected a file name or label of at most 4096"),
        (["a.png"], "`sources` has 1 entries but `features` has 2 items"),
    ],
)
def test_bad_sources_are_refused_before_any_inversion(capsys, good, tmp_path, sources, needle):
    fs, metadata = good
    path = write(tmp_path / "f.safetensors", fs.features, metadata, sources=sources)
    code, err = invert(capsys, path, tmp_path)
    assert code == 2 and str(path) in err and needle in err, err
    assert len(err) < 1000  # a 50 MB name is not printed


@pytest.mark.hostile("features-bad-sources")
def test_the_longest_source_still_names_its_output(good, tmp_path):
    fs, metadata = good
    long = ["a" * 4096, "a" * 4095 + "b"]  # two labels that differ only at their end
    path = write(tmp_path / "f.safetensors", fs.features, metadata, sources=long)
    assert main(["invert", str(path), "--method", "pixel", "--iterations", "1", "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(names) == 2 and all(len(name.encode()) <= 255 for name in names), names


@pytest.mark.hostile("features-one-dimensional")
def test_a_one_dimensional_tensor_is_told_how_to_give_one_item(good, tmp_path):
    fs, metadata = good
    with pytest.raises(
        ValueError,
        match=r"must be a batch of N feature maps \(N, C, H, W\), tokens \(N, T, D\) or "
        r"vectors \(N, D\), got shape \(640,\); give one item as `features\[None\]`",
    ):
        FeatureSet(features=torch.zeros(640), target=fs.target, layer=fs.layer, input_size=fs.input_size)
    path = write(tmp_path / "f.safetensors", torch.zeros(640), metadata, sources=["a.png"])
    with pytest.raises(ValueError, match="got shape \\(640,\\)"):
        FeatureSet.load(path)


@pytest.mark.hostile("features-bad-metadata")
@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("input_size", [-64, 64], "input_size"),
        ("preprocessing", {"input_size": [-5, 64]}, "preprocessing.input_size"),
        ("preprocessing", [1, 2], "metadata 'preprocessing' must be a JSON object"),
        ("weights_fingerprint", 12, "metadata 'weights_fingerprint' must be a string or null"),
        ("weights_fingerprint", "not-hex", "metadata 'weights_fingerprint' must be 16 hex digits"),
        ("weights", ["a"], "metadata 'weights' must be a string or null"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(capsys, good, tmp_path, field, value, needle):
    fs, metadata = good
    path = write(tmp_path / "f.safetensors", fs.features, metadata, **{field: value})
    with pytest.raises(ValueError, match=f"feature file {str(path)!r}: .*") as info:
        FeatureSet.load(path)
    assert needle in str(info.value) and "RuntimeError" not in str(info.value)
    code, err = invert(capsys, path, tmp_path)
    assert code == 2 and needle in err, err


@pytest.mark.hostile("features-disk-full")
def test_a_full_disk_names_the_feature_file(good, tmp_path, monkeypatch):
    fs, _ = good

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(diffinv.features, "save_file", full)
    target = tmp_path / "out" / "f.safetensors"
    with pytest.raises(OSError, match=f"No space left on device: could not write '{target}'; free space") as info:
        fs.save(target)
    assert info.value.errno == errno.ENOSPC
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left behind
