"""The pixel inverter's Fourier + colour-decorrelated parameterization (its default) against the sigmoid one."""

import pytest
import torch

from diffinv.features import FeatureSet
from diffinv.interpret.param import fourier_image
from diffinv.inverters import PixelInverter
from diffinv.inverters.pixel import fourier_decay_power, fourier_parameterization


@pytest.fixture(scope="module")
def lite0_64px_blocks1_feats(lite0_64px, photos_64px):
    return FeatureSet.extract(lite0_64px, photos_64px[:2], "blocks.1")


def test_fourier_is_the_default_and_sigmoid_stays_selectable(lite0_64px):
    new = PixelInverter(lite0_64px).config
    assert (new.parameterization, new.learning_rate, new.lr_schedule, new.decay_power) == (
        "fourier",
        0.05,
        False,
        None,
    )
    assert [fourier_decay_power(s) for s in (2, 4, 8, 16, 32, 64)] == pytest.approx([1.2, 1.2, 1.2, 1.0, 0.8, 0.8])
    old = PixelInverter(lite0_64px, parameterization="sigmoid")
    assert (old.config.learning_rate, old.config.tv_weight, old.config.jitter) == (0.1, 0.05, 1)  # the old values
    assert PixelInverter(lite0_64px, parameterization="sigmoid", tv_weight=0.0).config.tv_weight == 0.0
    assert old.settings()["parameterization"] == "sigmoid" and old.settings()["learning_rate"] == 0.1
    with pytest.raises(ValueError, match=r"`parameterization` must be one of 'fourier', 'sigmoid', got 'dct'"):
        PixelInverter(lite0_64px, parameterization="dct")
    with pytest.raises(ValueError, match="`decay_power` applies to the 'fourier' parameterization, not 'sigmoid'"):
        PixelInverter(lite0_64px, parameterization="sigmoid", decay_power=2.0)


def test_init_round_trips_and_visualization_shares_the_parameterization():
    images = torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    for decorrelate in (True, False):
        params, render = fourier_parameterization(2, (24, 30), init=images, decorrelate=decorrelate)
        assert params[0].shape == (2, 3, 24, 16, 2) and params[0].requires_grad
        torch.testing.assert_close(render(), images, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"`init` must be \(2, 3, 24, 30\) images, got \(1, 3, 24, 30\)"):
        fourier_parameterization(2, (24, 30), init=images[:1])
    # diffinv.interpret's fourier_image is the same parameterization, not a twin.
    a = fourier_image(2, (24, 30), generator=torch.Generator().manual_seed(3))[1]()
    b = fourier_parameterization(2, (24, 30), generator=torch.Generator().manual_seed(3))[1]()
    assert torch.equal(a, b)


def test_fourier_inversion_loss_falls_and_beats_sigmoid(lite0_64px, lite0_64px_blocks1_feats, photos_64px):
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    fourier = PixelInverter(lite0_64px, iterations=30)(lite0_64px_blocks1_feats, generator=generator(), progress=False)
    sigmoid = PixelInverter(lite0_64px, iterations=30, parameterization="sigmoid")(
        lite0_64px_blocks1_feats, generator=generator(), progress=False
    )
    history = fourier.loss_history
    assert (history[-5:].mean(0) < 0.5 * history[0]).all()
    assert all(f < s for f, s in zip(fourier.info["best_loss"], sigmoid.info["best_loss"]))
    assert fourier.feature_residual.mean() < sigmoid.feature_residual.mean()
    error = lambda out: (out.images - photos_64px[:2]).pow(2).mean()  # noqa: E731
    assert error(fourier) < error(sigmoid)


def test_fourier_refines_a_start(lite0_64px, lite0_64px_blocks1_feats, photos_64px):
    # Started from the originals themselves, a short refinement stays near them.
    out = PixelInverter(lite0_64px, iterations=3, learning_rate=0.005)(
        lite0_64px_blocks1_feats, progress=False, init=photos_64px[:2]
    )
    assert (out.images - photos_64px[:2]).abs().mean() < 0.02
