import pytest
import torch

from diffinv.features import FeatureSet
from diffinv.metrics import LPIPS, feature_residual, psnr, ssim, temporal_consistency, top1_agreement


def test_featureset_round_trip(lite0_64px, photos_64px, tmp_path):
    fs = FeatureSet.extract(lite0_64px, photos_64px, "blocks.2", sources=["a.png", "b.png", "c.png", "d.png"])
    path = fs.save(tmp_path / "f.safetensors")
    loaded = FeatureSet.load(path, target=lite0_64px)
    assert torch.equal(loaded.features, fs.features)
    assert (loaded.target, loaded.layer, loaded.input_size, loaded.sources) == (
        "tf_efficientnet_lite0",
        "blocks.2",
        (64, 64),
        ["a.png", "b.png", "c.png", "d.png"],
    )
    assert loaded.preprocessing["input_size"] == [64, 64]
    assert not list(tmp_path.glob("*.tmp"))


def test_featureset_checks_shape_and_finiteness(lite0_64px, photos_64px, tmp_path):
    fs = FeatureSet.extract(lite0_64px, photos_64px[:1], "blocks.2")
    wrong_layer = FeatureSet(fs.features, fs.target, "blocks.4", fs.input_size)
    with pytest.raises(ValueError, match=r"shape \(1, 40, 8, 8\) but the target layer produces \(N, 112, 4, 4\)"):
        wrong_layer.check(lite0_64px)
    bad = fs.features.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        FeatureSet(bad, fs.target, fs.layer, fs.input_size)
    other = FeatureSet(fs.features, "resnet50", "blocks.2", fs.input_size)
    with pytest.raises(ValueError, match="extracted with target 'resnet50'"):
        other.check(lite0_64px)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        FeatureSet.load(tmp_path / "junk.safetensors")


def test_psnr_known_values():
    y = torch.full((2, 3, 8, 8), 0.5)
    x = y.clone()
    x[0] += 0.1  # MSE 0.01 -> 20 dB
    x[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(x, y).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


def test_ssim_matches_scikit_image(photos_64px):
    from skimage.metrics import structural_similarity

    x = photos_64px[:2]
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ours = ssim(noisy, x)
    for i in range(2):
        ref = structural_similarity(
            noisy[i].permute(1, 2, 0).numpy(),
            x[i].permute(1, 2, 0).numpy(),
            channel_axis=2,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
    assert 0.2 < ours.min() < 0.9
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_lpips_unavailable_without_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metric = LPIPS()
    assert not metric.available and "AlexNet weights not found" in metric.reason
    assert metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)) is None


def test_lpips_uses_cached_backbone(tmp_path, monkeypatch):
    # Any file at the torchvision cache path is what torchvision would load: here a
    # randomly initialised AlexNet, to test the loading path (not its values).
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / "alexnet-owt-7be5be79.pth")
    metric = LPIPS()
    assert metric.available
    x = torch.rand(2, 3, 64, 64)
    d = metric(x, x.flip(-1))
    assert d.shape == (2,) and (d > 0).all()
    assert metric(x, x).abs().max() < 1e-6


def test_feature_residual_and_top1(lite0_64px, photos_64px):
    x = photos_64px
    feats = lite0_64px.feature(x, "blocks.2")
    assert feature_residual(lite0_64px, x, feats, "blocks.2").abs().max() < 1e-5
    assert (feature_residual(lite0_64px, torch.rand_like(x), feats, "blocks.2") > 0.3).all()
    assert top1_agreement(lite0_64px, x, x).tolist() == [1.0] * 4


def test_temporal_consistency():
    frames = torch.zeros(3, 3, 4, 4)
    frames[1] += 0.5
    assert temporal_consistency(frames) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_consistency(frames[:1])
