"""Hybrid inversion: the white-box optimization starts from the black-box mapper's latent.

Tiny random diffusion components (``load_pipeline("tiny")``: 32 px images, VAE factor 2),
the real EfficientNet-Lite0 target at 32 px, four real photos. A FeatureMapper is trained
for the pipeline's own VAE on these photos (latent + pixel + feature loss), so its decoded
latent already matches the features better than noise; the hybrid start must keep that
lead through the same number of optimization iterations.

The hybrid start is ``DiffInvPipeline.__call__(..., init="mapper", mapper=FeatureMapper,
strength=s)``: the mapper's latent is noised as :meth:`DiffInvPipeline.img2img` does and the
optimization runs through the same img2img chain (``img2img_steps(K, s)`` steps; that it is the
very chain of img2img and of ``MapperInverter``'s refinement is tested in test_pipeline.py).
"""

import pytest
import torch

from diffinv.features import FeatureSet
from diffinv.io import sample_images, save_image
from diffinv.jobs.training import TrainConfig, train_mapper
from diffinv.metrics import feature_residual
from diffinv.models import FeatureMapper, decode_latents
from diffinv.targets import TargetNetwork

LAYER = "blocks.2"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_hybrid_start_beats_noise_start(tmp_path):
    from diffinv.pipelines import load_pipeline

    target = TargetNetwork.from_name("tf_efficientnet_lite0", LAYER, input_size=(32, 32))
    pipe = load_pipeline("tiny", target=target, layer=LAYER)
    pipe.set_progress_bar_config(disable=True)
    images = sample_images(("chelsea", "coffee", "astronaut", "rocket"), 32)
    fs = FeatureSet.extract(target, images, LAYER)

    # 1. A mapper for the pipeline's VAE, trained on (these images, their features)
    for i, image in enumerate(images):
        save_image(image, tmp_path / "photos" / f"photo{i}.png")
    pipe.vae.save_pretrained(tmp_path / "model" / "vae")
    train_mapper(
        TrainConfig(
            out=str(tmp_path / "mapper"),
            layer=LAYER,
            images=[str(tmp_path / "photos")],
            val_fraction=0.0,
            model=str(tmp_path / "model"),
            size=32,
            batch_size=4,
            max_steps=100,
            hidden_channels=32,
            learning_rate=3e-3,
            pixel_weight=1.0,
            feature_weight=1.0,
            min_crop=1.0,
            checkpoint_every=1000,
            device="cpu",
            progress=False,
        )
    )
    mapper = FeatureMapper.from_pretrained(tmp_path / "mapper")

    # 2. The premise: the mapper's decoded latent matches the features better than decoded noise
    with torch.no_grad():
        latents = mapper.initial_latents(fs)
        assert latents.shape == (4, 4, 16, 16)
        start = feature_residual(target, decode_latents(pipe.vae, latents).clamp(0, 1), fs.features, LAYER)
        noise = feature_residual(
            target, decode_latents(pipe.vae, torch.randn_like(latents)).clamp(0, 1), fs.features, LAYER
        )
    assert start.mean() < noise.mean()

    # 3. Same sampler, same number of iterations: the mapper start ends lower than the noise start
    kwargs = dict(prompt="", num_inference_steps=2, iterations=10, output_type="pt")
    from_noise = pipe(fs, init="noise", generator=torch.Generator().manual_seed(0), **kwargs)
    hybrid = pipe(fs, init="mapper", mapper=mapper, generator=torch.Generator().manual_seed(0), **kwargs)
    assert hybrid.loss_history.shape == from_noise.loss_history.shape == (10, 4)
    assert hybrid.feature_residual.mean() < from_noise.feature_residual.mean()


def test_hybrid_start_bad_input():
    from diffinv.pipelines import load_pipeline

    target = TargetNetwork.from_name("tf_efficientnet_lite0", LAYER, input_size=(32, 32))
    pipe = load_pipeline("tiny", target=target, layer=LAYER)
    feats = FeatureSet.extract(target, torch.rand(1, 3, 32, 32), LAYER)
    with pytest.raises(ValueError, match="`init='mapper'` needs `mapper=`"):
        pipe(feats, init="mapper", iterations=1)
    with pytest.raises(ValueError, match="`init` must be 'noise', 'mapper' or 'image'"):
        pipe(feats, init="zeros", iterations=1)
    mapper = FeatureMapper.for_target(target, LAYER, (32, 32), pipe.vae, hidden_channels=8)
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"`strength` must be a number in \(0, 1\]"):
            pipe(feats, init="mapper", mapper=mapper, strength=strength, iterations=1)
    with pytest.raises(ValueError, match="pass either `latents` or `init='mapper'`, not both"):
        pipe(feats, init="mapper", mapper=mapper, latents=torch.zeros(1, 4, 16, 16), iterations=1)
