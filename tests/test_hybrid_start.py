"""The hybrid start from any image estimate: ``pipe(features, init="image", image=x, strength=s)`` and
``DiffusionInverter(start=...)`` (a black-box decoder's, a GAN's or a file's estimate refined through the chain).

Tiny random diffusion components (``load_pipeline("tiny")``: 32 px, VAE factor 2) whose VAE scaling factor
is set as Stable Diffusion's was (1 / the std of its latents on images), the real EfficientNet-Lite0 at 32 px,
real photos.
"""

import json
import os
import re

import pytest
import torch

from diffinv.cli import main
from diffinv.features import FeatureSet
from diffinv.inverters import DecoderInverter, DiffusionInverter, GANInverter
from diffinv.io import sample_images, save_image
from diffinv.losses import feature_loss
from diffinv.models import UpconvNet, decode_latents
from diffinv.targets import TargetNetwork

LAYER = "blocks.2"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chelsea_coffee_32px_feats(lite0_blocks2_32px, chelsea_coffee_32px):
    return FeatureSet.extract(lite0_blocks2_32px, chelsea_coffee_32px, LAYER)


@pytest.fixture(scope="module")
def scaled_tiny_pipeline(lite0_blocks2_32px, chelsea_coffee_32px):
    from diffinv.pipelines import load_pipeline

    pipe = load_pipeline("tiny", target=lite0_blocks2_32px, layer=LAYER)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # unit-variance scaled latents, as SD's 0.18215 was chosen for its own VAE
        raw = pipe.encode_image(chelsea_coffee_32px) / pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=float(1 / raw.std()))
    return pipe


def test_strength_to_zero_returns_the_encoded_decoded_start(
    scaled_tiny_pipeline, chelsea_coffee_32px_feats, chelsea_coffee_32px
):
    with torch.no_grad():
        encoded_decoded = decode_latents(
            scaled_tiny_pipeline.vae, scaled_tiny_pipeline.encode_image(chelsea_coffee_32px)
        ).clamp(0, 1)
    gaps = {}
    for steps, strength in ((1000, 1e-3), (100, 1e-2), (20, 0.5)):
        out = scaled_tiny_pipeline(
            chelsea_coffee_32px_feats,
            init="image",
            image=chelsea_coffee_32px,
            strength=strength,
            num_inference_steps=steps,
            iterations=1,
            prompt="",
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )
        gaps[strength] = (out.images - encoded_decoded).abs()
    # the limit: one step from t = 0 (noise std 0.03) gives back the VAE's reconstruction of the start
    assert gaps[1e-3].mean() < 0.015 and gaps[1e-3].max() < 0.15
    assert gaps[1e-3].mean() < gaps[1e-2].mean() < gaps[0.5].mean()
    assert (encoded_decoded - chelsea_coffee_32px).abs().mean() > 5 * gaps[
        1e-3
    ].mean()  # the random VAE itself is lossy


def test_one_start_image_for_every_feature_map_and_pil(
    scaled_tiny_pipeline, chelsea_coffee_32px_feats, chelsea_coffee_32px
):
    from diffinv.io import to_pil

    kwargs = dict(init="image", strength=0.5, num_inference_steps=2, iterations=1, prompt="", output_type="pt")
    one = scaled_tiny_pipeline(
        chelsea_coffee_32px_feats, image=chelsea_coffee_32px[:1], generator=torch.Generator().manual_seed(0), **kwargs
    )
    pil = scaled_tiny_pipeline(
        chelsea_coffee_32px_feats,
        image=[to_pil(chelsea_coffee_32px[0])],
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert one.images.shape == (2, 3, 32, 32)
    assert (one.images - pil.images).abs().mean() < 0.01  # PIL: the same image through 8 bits


def test_black_box_start_never_ends_worse_than_it_started(
    scaled_tiny_pipeline, lite0_blocks2_32px, chelsea_coffee_32px_feats, chelsea_coffee_32px
):
    good = chelsea_coffee_32px.clone()  # a perfect estimate: no refinement can lower its feature loss (0)
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    decoder = DecoderInverter(
        lite0_blocks2_32px, decoder=UpconvNet.for_target(lite0_blocks2_32px, LAYER, (32, 32))
    )  # untrained: a poor start
    for start in (good, noise, decoder):
        inverter = DiffusionInverter(
            lite0_blocks2_32px, scaled_tiny_pipeline, start=start, num_inference_steps=4, iterations=4, prompt=""
        )
        assert inverter.hybrid and inverter.config.strength == 0.3  # DRAG++'s default
        out = inverter(chelsea_coffee_32px_feats, generator=torch.Generator().manual_seed(0), progress=False)
        start_loss = torch.tensor(out.info["start_loss"])
        final = feature_loss(lite0_blocks2_32px.feature(out.images, LAYER), chelsea_coffee_32px_feats.features)
        assert (final <= start_loss + 1e-5).all(), (start, final, start_loss)
        if start is good:
            assert out.info["kept_start"] == [True, True] and torch.allclose(
                out.images, chelsea_coffee_32px, atol=1e-6
            )
        else:  # a poor start is improved on, and the refinement is what comes back
            assert out.info["kept_start"] == [False, False] and (final < start_loss).all()
    assert out.info["start_method"] == "decoder" and "start" in inverter.settings()
    assert inverter.settings()["start"]["method"] == "decoder"


def test_gan_start_then_diffusion(scaled_tiny_pipeline, lite0_blocks2_32px, chelsea_coffee_32px_feats):
    gan = GANInverter(lite0_blocks2_32px, "tiny:32", restarts=2, iterations=5)
    out = DiffusionInverter(
        lite0_blocks2_32px, scaled_tiny_pipeline, start=gan, num_inference_steps=2, iterations=2, prompt=""
    )(chelsea_coffee_32px_feats, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.images.shape == (2, 3, 32, 32) and out.info["start_method"] == "gan"
    assert out.info["start_info"]["class_source"] == "predicted"


def test_hybrid_start_bad_input(scaled_tiny_pipeline, chelsea_coffee_32px_feats, chelsea_coffee_32px, tmp_path):
    with pytest.raises(ValueError, match="`init='image'` needs `image=`"):
        scaled_tiny_pipeline(chelsea_coffee_32px_feats, init="image", iterations=1)
    with pytest.raises(ValueError, match="3 images for 2 feature maps"):
        scaled_tiny_pipeline(chelsea_coffee_32px_feats, init="image", image=torch.rand(3, 3, 32, 32), iterations=1)
    with pytest.raises(ValueError, match=r"`image` must hold finite values in \[0, 1\]"):
        scaled_tiny_pipeline(chelsea_coffee_32px_feats, init="image", image=chelsea_coffee_32px * 255, iterations=1)
    with pytest.raises(ValueError, match="`image` is the start of `init='image'`"):
        scaled_tiny_pipeline(chelsea_coffee_32px_feats, image=chelsea_coffee_32px, iterations=1)
    with pytest.raises(ValueError, match=r"`strength` must be a number in \(0, 1\]"):
        scaled_tiny_pipeline(
            chelsea_coffee_32px_feats, init="image", image=chelsea_coffee_32px, strength=0.0, iterations=1
        )
    with pytest.raises(FileNotFoundError, match="do not exist"):
        DiffusionInverter(
            chelsea_coffee_32px_feats.to_target(), scaled_tiny_pipeline, start=str(tmp_path / "missing.png")
        )


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def feature_file(tmp_path_factory, chelsea_coffee_32px):
    folder = tmp_path_factory.mktemp("hybrid_cli")
    files = [str(save_image(img, folder / f"{n}.png")) for img, n in zip(chelsea_coffee_32px, ("cat", "coffee"))]
    assert main(["extract", *files, "--layer", LAYER, "--size", "32", "-o", str(folder / "f.safetensors")]) == 0
    return folder / "f.safetensors", files


def test_cli_invert_hybrids(feature_file, tmp_path):
    feats, files = feature_file
    common = ["--model", "tiny", "--steps", "2", "--iterations", "2", "--prompt", "", "--device", "cpu"]
    assert (
        main(
            [
                "invert",
                str(feats),
                "--method",
                "diffusion",
                "--init",
                files[0],
                "--strength",
                "0.5",
                "-o",
                str(tmp_path / "a"),
                *common,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["hybrid"] and metrics["settings"]["strength"] == 0.5 and metrics["settings"]["init"] == "image"
    decoder = tmp_path / "decoder"
    target = FeatureSet.load(feats).to_target()
    UpconvNet.for_target(target, LAYER, (32, 32)).save_pretrained(decoder)
    assert (
        main(
            [
                "invert",
                str(feats),
                "--method",
                "decoder+diffusion",
                "--decoder",
                str(decoder),
                "-o",
                str(tmp_path / "b"),
                *common,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["hybrid"] and metrics["settings"]["strength"] == 0.3
    assert metrics["settings"]["start"]["method"] == "decoder"
    assert sorted(p.name for p in (tmp_path / "b").glob("*.png")) == [
        "cat_decoder+diffusion.png",
        "coffee_decoder+diffusion.png",
    ]


def test_cli_hybrid_errors(feature_file, tmp_path, capsys):
    feats, _ = feature_file
    base = ["invert", str(feats), "-o", str(tmp_path / "x"), "--model", "tiny"]
    assert main([*base, "--method", "diffusion", "--init", "nothing.png"]) == 2
    assert "neither one of dip, gan, mapper, decoder nor an existing image file" in capsys.readouterr().err
    assert main([*base, "--method", "dip", "--init", "gan"]) == 2
    assert re.search(
        r"starts a refinement \(diffusion, pixel(, \w+)*\); it does not apply to `--method dip`",
        capsys.readouterr().err,
    )  # (with the refiners of installed plugins)
    assert main([*base, "--method", "diffusion", "--init", "dip", "--strength", "0"]) == 2
    assert "expected (0, 1]" in capsys.readouterr().err
    assert main([*base, "--method", "decoder+diffusion"]) == 2
    assert "needs `--decoder`" in capsys.readouterr().err


def test_bench_marks_hybrid_rows(tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--target",
                "tf_efficientnet_lite0",
                "--weights",
                "random:0",
                "--layers",
                LAYER,
                "--methods",
                "gan",
                "gan+diffusion",
                "--model",
                "tiny",
                "--gan",
                "tiny:32",
                "--size",
                "32",
                "--num-images",
                "1",
                "--seeds",
                "0",
                "--iterations",
                "2",
                "--restarts",
                "1",
                "--steps",
                "2",
                "--prompt",
                "",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = json.loads((out / "results.json").read_text())["records"]
    assert {r["method"]: r["hybrid"] for r in records} == {"gan": False, "gan+diffusion": True}
    table = (out / "results.md").read_text()
    assert "| gan+diffusion | hybrid |" in table and "| gan | white |" in table


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("DIFFINV_SD_PATH"),
    reason="set DIFFINV_SD_PATH to a diffusers Stable Diffusion "
    "folder (and DIFFINV_BIGGAN to BigGAN weights for the GAN start) to measure the hybrids",
)
def test_real_hybrids():
    """Quality with real weights: ``DIFFINV_SD_PATH=DIR [DIFFINV_BIGGAN=DIR] pytest -m slow tests/test_hybrid_start.py -s``.

    The start is the GAN inversion with real BigGAN weights when given, else a blurred photo (a stand-in for a
    black-box estimate); strength 0.3 refinement through real Stable Diffusion must not end worse than its start.
    """
    import torch.nn.functional as F

    from diffinv.metrics import psnr

    device = "cuda" if torch.cuda.is_available() else "cpu"
    target = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.4", input_size=(128, 128)).to(device)
    photos = sample_images(("chelsea", "coffee"), 128)
    features = FeatureSet.extract(target, photos.to(device), "blocks.4")
    if os.environ.get("DIFFINV_BIGGAN"):
        start = GANInverter(target, os.environ["DIFFINV_BIGGAN"])
    else:
        start = F.interpolate(F.interpolate(photos, size=16, mode="area"), size=128, mode="bilinear").clamp(0, 1)
    inverter = DiffusionInverter(
        target, os.environ["DIFFINV_SD_PATH"], start=start, num_inference_steps=20, iterations=50, device=device
    )
    out = inverter(features, generator=torch.Generator().manual_seed(0))
    print(
        "start loss",
        out.info["start_loss"],
        "refined loss",
        out.info["refined_loss"],
        "kept",
        out.info["kept_start"],
        "PSNR",
        psnr(out.images, photos).tolist(),
        f"{out.seconds / 2:.1f} s / image",
    )
    assert (torch.tensor(out.info["refined_loss"]) < torch.tensor(out.info["start_loss"])).any()
