import pytest
import torch

from diffinv.features import FeatureSet
from diffinv.inverters import DIPInverter, PixelInverter
from diffinv.inverters.dip import GREY_START_STRIDE, SkipGenerator, dip_parameterization
from diffinv.losses import total_variation


@pytest.fixture(scope="module")
def lite0_64px_blocks2_feats(lite0_64px, photos_64px):
    return FeatureSet.extract(lite0_64px, photos_64px[:2], "blocks.2")


@pytest.mark.parametrize("cls", [PixelInverter, DIPInverter])
def test_loss_falls_and_output_is_valid(cls, lite0_64px, lite0_64px_blocks2_feats):
    out = cls(lite0_64px, iterations=40)(
        lite0_64px_blocks2_feats, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert out.images.shape == (2, 3, 64, 64)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.loss_history.shape == (40, 2)
    assert (out.loss_history[-5:].mean(0) < 0.7 * out.loss_history[0]).all()
    assert out.feature_residual.shape == (2,) and (out.feature_residual < 1).all()
    assert out.method == cls.name and out.seconds > 0


def test_dip_grey_start_renders_flat_grey_then_learns(lite0_64px, lite0_64px_blocks2_feats):
    _, render = dip_parameterization(2, (64, 64), grey_start=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(render(train=False), torch.full((2, 3, 64, 64), 0.5))
    _, render = dip_parameterization(2, (64, 64), generator=torch.Generator().manual_seed(0))
    assert render(train=False).std() > 0.01  # the random generators' own pattern
    # the zeroed output layer does not stall the optimization: the loss falls as from a random start
    out = DIPInverter(lite0_64px, iterations=40, grey_start=True)(
        lite0_64px_blocks2_feats, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert out.info["grey_start"] is True
    assert (out.loss_history[-5:].mean(0) < 0.7 * out.loss_history[0]).all()


@pytest.mark.parametrize("layer", ["blocks.2", "blocks.6"])
def test_dip_grey_start_follows_the_stride_unless_given(lite0_64px, photos_64px, layer):
    features = FeatureSet.extract(lite0_64px, photos_64px[:1], layer)
    coarse = 64 / features.features.shape[-2] >= GREY_START_STRIDE
    assert coarse == (layer == "blocks.6")  # stride 32 and 8
    runs = {}
    for grey_start in (None, not coarse):
        out = DIPInverter(lite0_64px, iterations=2, grey_start=grey_start)(
            features, generator=torch.Generator().manual_seed(0), progress=False
        )
        runs[grey_start] = out
        assert out.info["grey_start"] is (coarse if grey_start is None else grey_start)
    assert not torch.equal(runs[None].images, runs[not coarse].images)


def test_same_seed_same_result(lite0_64px, lite0_64px_blocks2_feats):
    a = PixelInverter(lite0_64px, iterations=5)(
        lite0_64px_blocks2_feats, generator=torch.Generator().manual_seed(1), progress=False
    )
    b = PixelInverter(lite0_64px, iterations=5)(
        lite0_64px_blocks2_feats, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert torch.equal(a.images, b.images)


def test_dip_generators_are_independent():
    # Image 0's output must not depend on image 1's input: the grouped convolutions keep
    # the N generators apart.
    torch.manual_seed(0)
    net = SkipGenerator(groups=2, in_channels=4, channels=(8, 8))
    z = torch.rand(1, 8, 16, 16, requires_grad=True)
    net(z)[0].sum().backward()
    assert z.grad[:, :4].abs().sum() > 0
    assert z.grad[:, 4:].abs().sum() == 0


def test_batch_of_one_equals_single_for_dip_structure():
    # The same weights in a group of 1 and in slot 0 of a group of 2 give the same image.
    torch.manual_seed(0)
    one = SkipGenerator(groups=1, in_channels=4, channels=(8, 8))
    two = SkipGenerator(groups=2, in_channels=4, channels=(8, 8))
    with torch.no_grad():
        for p1, p2 in zip(one.parameters(), two.parameters()):
            p2[: p1.shape[0]].copy_(p1)  # group 0 holds the first rows of every weight
    z = torch.rand(1, 4, 16, 16)
    z2 = torch.cat([z, torch.rand(1, 4, 16, 16)], dim=1)
    assert torch.allclose(one(z)[0], two(z2)[0], atol=1e-5)


def test_tv_prior_prefers_smooth_images():
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    noisy = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for kind in ("isotropic", "anisotropic"):
        assert total_variation(smooth, kind) < total_variation(noisy, kind)
    with pytest.raises(ValueError, match="`tv` kind must be"):
        total_variation(smooth, "cubic")


def test_bad_features_are_rejected(lite0_64px_blocks2_feats):
    from diffinv.targets import TargetNetwork

    lite0 = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(64, 64))
    inverter = PixelInverter(lite0, iterations=2)
    with pytest.raises(ValueError, match=r"but the target layer produces"):
        inverter(torch.rand(1, 40, 7, 7), (64, 64), progress=False)
    bad = lite0_64px_blocks2_feats.features.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        inverter(bad, (64, 64), progress=False)
    with pytest.raises(ValueError, match="divisible by 16"):
        DIPInverter(lite0, iterations=1)(lite0.feature(torch.rand(1, 3, 72, 72), "blocks.2"), (72, 72), progress=False)


def test_non_finite_steps_are_skipped(lite0_64px, lite0_64px_blocks2_feats, monkeypatch):
    import diffinv.inverters.optimizing as optimizing

    calls = {"n": 0}
    real = optimizing.feature_loss

    def flaky(pred, target, kind):
        calls["n"] += 1
        loss = real(pred, target, kind)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(optimizing, "feature_loss", flaky)
    out = PixelInverter(lite0_64px, iterations=4)(
        lite0_64px_blocks2_feats, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert out.info["skipped_steps"] == 1
    assert torch.isfinite(out.images).all()
