"""GAN latent inversion (``--method gan``): a small random BigGAN-deep of ``pytorch-pretrained-biggan``
(``tiny:32``, seeded; the real architecture with few channels), the real EfficientNet-Lite0 at 32 px.

Real weights: ``DIFFINV_BIGGAN=DIR_OR_NAME pytest -m slow tests/test_gan.py`` (a folder with config.json and
pytorch_model.bin, or biggan-deep-128 in the package's cache).
"""

import json
import os

import pytest
import torch
from torch import nn

from diffinv.cli import main
from diffinv.features import FeatureSet
from diffinv.inverters import INVERTERS, GANInverter
from diffinv.losses import feature_loss
from diffinv.models.gan import GANFilesNotFoundError, load_biggan, random_biggan
from diffinv.targets import TargetNetwork

pytest.importorskip("pytorch_pretrained_biggan")
LAYER = "blocks.2"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gan():
    return load_biggan("tiny:32")


@pytest.fixture(scope="module")
def in_range(gan, lite0_blocks2_32px):
    """Features of images the generator itself renders (reachable targets)."""
    with torch.no_grad():
        z = gan.sample_latents(2, torch.Generator().manual_seed(7))
        images = gan(z, gan.class_embeddings(torch.tensor([3, 500])))
    return FeatureSet.extract(lite0_blocks2_32px, images, LAYER), images


def test_registered_and_small_random_biggan_is_the_real_architecture(gan):
    from pytorch_pretrained_biggan import BigGAN

    assert INVERTERS["gan"] is GANInverter and INVERTERS["gan"].white_box
    assert isinstance(gan.model, BigGAN) and gan.resolution == (32, 32) and gan.truncation == 0.7
    images = gan(
        gan.sample_latents(3, torch.Generator().manual_seed(0)), gan.class_embeddings(torch.tensor([0, 1, 2]))
    )
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.05 and (images[0] - images[1]).abs().mean() > 0.02  # varied, not saturated or constant
    again = random_biggan(32)
    assert all(torch.equal(a, b) for a, b in zip(gan.state_dict().values(), again.state_dict().values()))


def test_gradient_reaches_z_and_the_class_embedding(gan, lite0_blocks2_32px, in_range):
    features, _ = in_range
    z = gan.sample_latents(2, torch.Generator().manual_seed(0)).requires_grad_()
    embed = gan.class_embeddings(torch.tensor([1, 2])).requires_grad_()
    feature_loss(lite0_blocks2_32px.feature(gan(z, embed), LAYER), features.features).sum().backward()
    for grad in (z.grad, embed.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.parameters())  # the generator is frozen


def test_loss_falls_on_an_in_range_target(gan, lite0_blocks2_32px, in_range):
    features, _ = in_range
    inverter = GANInverter(lite0_blocks2_32px, gan, restarts=2, iterations=40, learning_rate=0.05)
    out = inverter(features, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.images.shape == (2, 3, 32, 32) and out.loss_history.shape == (40, 2)
    assert (out.loss_history[-1] < 0.8 * out.loss_history[0]).all()
    assert torch.allclose(torch.tensor(out.info["best_loss"]), out.loss_history.min(dim=0).values, atol=1e-5)
    assert out.info["restarts"] == 2 and len(out.info["best_restart"]) == 2
    # the class starts from the target's own prediction (it classifies blocks.2 features)
    assert out.info["class_source"] == "predicted"
    assert inverter.settings() == {
        "method": "gan",
        "classes": None,
        "gan": "tiny:32:0",
        "iterations": 40,
        "learning_rate": 0.05,
        "loss": "nmse",
        "optimize_class": True,
        "restarts": 2,
        "truncation": 0.7,
    }


def test_best_of_restarts_and_truncation_bound(gan, lite0_blocks2_32px, in_range):
    features, _ = in_range
    out = GANInverter(lite0_blocks2_32px, gan, restarts=3, iterations=3, classes=5)(
        features, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert out.info["class_source"] == "given" and out.info["classes"] == [5, 5]
    assert out.info["latents"].abs().max() <= 2 * 0.7  # z stays in the truncation region
    single = GANInverter(lite0_blocks2_32px, gan, restarts=1, iterations=3, classes=5)(
        features, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert single.info["best_restart"] == [0, 0]


def test_any_module_generator(lite0_blocks2_32px, in_range):
    features, _ = in_range
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 3 * 16 * 16), nn.Unflatten(1, (3, 16, 16)), nn.Tanh())
    with pytest.raises(ValueError, match="`z_dim` is required"):
        GANInverter(lite0_blocks2_32px, net)
    out = GANInverter(lite0_blocks2_32px, net, z_dim=16, restarts=2, iterations=20, learning_rate=0.1)(
        features, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert out.images.shape == (2, 3, 32, 32)  # resized to the features' input size
    assert out.info["class_source"] == "none" and (out.loss_history[-1] < out.loss_history[0]).all()


def test_weights_load_from_a_folder_or_the_cache_never_downloaded(tmp_path, monkeypatch, gan):
    monkeypatch.setenv("PYTORCH_PRETRAINED_BIGGAN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(GANFilesNotFoundError, match="never downloaded at run time") as err:
        load_biggan("biggan-deep-128")
    assert "biggan-deep-128-pytorch_model.bin" in str(err.value) and "--gan DIR" in str(err.value)
    with pytest.raises(GANFilesNotFoundError, match="a folder with config.json and pytorch_model.bin"):
        load_biggan(tmp_path / "nothing")
    # a folder (config.json + pytorch_model.bin), as the package's own from_pretrained reads it
    folder = tmp_path / "biggan"
    folder.mkdir()
    (folder / "config.json").write_text(gan.model.config.to_json_string())
    torch.save(gan.model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_biggan(folder, truncation=0.7)
    z, e = gan.sample_latents(1), gan.class_embeddings(torch.tensor([9]))
    with torch.no_grad():
        assert torch.allclose(loaded(z, e), gan(z, e), atol=1e-5)
    # the package's cache: files named by hashes, a .json next to each naming its url
    cache = tmp_path / "cache"
    cache.mkdir()
    base = "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-128-"
    for name, suffix in (("config.json", "config.json"), ("pytorch_model.bin", "pytorch_model.bin")):
        (cache / f"h{len(name)}").write_bytes((folder / name).read_bytes())
        (cache / f"h{len(name)}.json").write_text(json.dumps({"url": base + suffix, "etag": None}))
    with torch.no_grad():
        assert torch.allclose(load_biggan("biggan-deep-128")(z, e), gan(z, e), atol=1e-5)


def test_cli_gan(tmp_path, in_range, capsys):
    _, images = in_range
    from diffinv.io import save_image

    files = [str(save_image(img, tmp_path / f"g{i}.png")) for i, img in enumerate(images)]
    feats = tmp_path / "f.safetensors"
    assert main(["extract", *files, "--layer", LAYER, "--size", "32", "-o", str(feats)]) == 0
    assert (
        main(
            [
                "invert",
                str(feats),
                "--method",
                "gan",
                "--gan",
                "tiny:32",
                "--iterations",
                "3",
                "--restarts",
                "2",
                "--truncation",
                "0.5",
                "--device",
                "cpu",
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["settings"]["truncation"] == 0.5 and metrics["settings"]["restarts"] == 2 and not metrics["hybrid"]
    assert (
        main(
            ["invert", str(feats), "--method", "gan", "--gan", str(tmp_path / "no_biggan"), "-o", str(tmp_path / "x")]
        )
        == 2
    )
    assert "config.json and pytorch_model.bin" in capsys.readouterr().err
    assert main(["invert", str(feats), "--method", "gan", "--gan", "tiny:33", "-o", str(tmp_path / "x")]) == 2
    assert "tiny:RES" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["invert", str(feats), "--method", "gan", "--truncation", "0", "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--truncation: expected a number in (0, 1], got 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("DIFFINV_BIGGAN"),
    reason="set DIFFINV_BIGGAN to a BigGAN folder (config.json + pytorch_model.bin) or biggan-deep-128 "
    "in the pytorch-pretrained-biggan cache to measure GAN inversion with real weights",
)
def test_real_biggan_inverts_real_features():
    """Quality with real weights: ``DIFFINV_BIGGAN=DIR_OR_NAME pytest -m slow tests/test_gan.py -s``."""
    where = os.environ["DIFFINV_BIGGAN"]
    from diffinv.io import sample_images
    from diffinv.metrics import psnr

    target = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], input_size=(128, 128))
    photos = sample_images(("chelsea", "coffee"), 128)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    target = target.to(device)
    gan = load_biggan(where, device=device)
    for layer in ("blocks.4", "blocks.2"):
        features = FeatureSet.extract(target, photos.to(device), layer)
        out = GANInverter(target, gan)(features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # a random sample of the predicted class is the baseline to beat
            classes = torch.tensor(out.info["classes"])
            sample = gan(
                gan.sample_latents(2, torch.Generator().manual_seed(1)).to(device), gan.class_embeddings(classes)
            )
        baseline = feature_loss(target.feature(sample, layer), features.features).cpu()
        print(
            layer,
            "feature residual",
            out.feature_residual.tolist(),
            "PSNR",
            psnr(out.images, photos).tolist(),
            "classes",
            out.info["classes"],
            f"{out.seconds / 2:.1f} s / image",
        )
        assert (torch.tensor(out.info["best_loss"]) < baseline).all()
        assert out.info["class_source"] == "predicted" and out.info["classes"][0] in range(281, 294)  # a cat class
