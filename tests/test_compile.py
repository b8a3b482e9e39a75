"""``compile=`` (torch.compile of the networks that run every iteration) gives the eager results.

The pixel test compiles with inductor (real C++ kernels on CPU, about a minute here); the DIP and
pipeline tests use the ``aot_eager`` backend, which traces the same graphs (forward and backward,
through activation checkpointing) without generating code, so they stay fast.
"""

import functools

import pytest
import torch
from threads import run_in_threads

from diffinv.compilation import backend, compiled, compiled_feature, feature_function
from diffinv.features import FeatureSet
from diffinv.inverters import DIPInverter, PixelInverter
from diffinv.pipelines import load_pipeline
from diffinv.targets import TargetNetwork

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noise_feats(lite0_blocks0_1_anysize):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return FeatureSet.extract(lite0_blocks0_1_anysize, images, "blocks.1", sources=["a", "b"])


def test_compiled_networks_are_made_once_and_kept(lite0_blocks0_1_anysize):
    first = compiled_feature(lite0_blocks0_1_anysize, "blocks.1")
    assert compiled_feature(lite0_blocks0_1_anysize, "blocks.1") is first
    assert compiled_feature(lite0_blocks0_1_anysize, "blocks.0") is not first
    assert compiled_feature(lite0_blocks0_1_anysize, "blocks.1", "aot_eager") is not first  # one per backend
    plain = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.1", input_size=None)
    assert set(lite0_blocks0_1_anysize.state_dict()) == set(plain.state_dict())  # kept outside the modules
    eager = feature_function(lite0_blocks0_1_anysize, "blocks.1", compile=False)
    assert eager is not first and eager.func == lite0_blocks0_1_anysize.feature
    net = torch.nn.Linear(2, 2)
    assert compiled(net) is compiled(net) and compiled(net, key="other") is not compiled(net)
    assert backend(True) == "inductor" and backend(False) is None and backend("aot_eager") == "aot_eager"
    with pytest.raises(
        ValueError,
        match=r"`compile` must be True, False, a torch.compile mode \(default, "
        r"reduce-overhead, max-autotune.*\) or a torch.compile backend \(.*aot_eager.*"
        r"\), got 'fastest'",
    ):
        backend("fastest")


def _same(fast, eager):
    torch.testing.assert_close(fast.loss_history, eager.loss_history, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.images, eager.images, rtol=1e-3, atol=2e-3)


def test_inductor_compiled_pixel_inversion_matches_eager(lite0_blocks0_1_anysize, noise_feats):
    eager = PixelInverter(lite0_blocks0_1_anysize, iterations=3).invert(
        noise_feats, generator=torch.Generator().manual_seed(1), progress=False
    )
    inverter = PixelInverter(lite0_blocks0_1_anysize, iterations=3, compile=True)
    assert inverter.settings()["compile"] is True
    _same(inverter.invert(noise_feats, generator=torch.Generator().manual_seed(1), progress=False), eager)
    assert ("feature:blocks.1", "inductor", None) in lite0_blocks0_1_anysize.__dict__["_diffinv_compiled"]


def test_compiled_dip_generator_matches_eager(lite0_blocks0_1_anysize, noise_feats):
    kwargs = dict(iterations=3, channels=(8, 8), in_channels=4)
    eager = DIPInverter(lite0_blocks0_1_anysize, **kwargs).invert(
        noise_feats, generator=torch.Generator().manual_seed(1), progress=False
    )
    fast = DIPInverter(lite0_blocks0_1_anysize, compile="aot_eager", **kwargs).invert(
        noise_feats, generator=torch.Generator().manual_seed(1), progress=False
    )
    _same(fast, eager)


def test_compiled_pipeline_matches_eager(lite0_blocks0_1_anysize, noise_feats):
    pipe = load_pipeline("tiny", target=lite0_blocks0_1_anysize, layer="blocks.1")
    pipe.set_progress_bar_config(disable=True)
    run = dict(num_inference_steps=2, iterations=2, output_type="pt", prompt="")
    eager = pipe(noise_feats, generator=torch.Generator().manual_seed(2), **run)
    fast = pipe(noise_feats, generator=torch.Generator().manual_seed(2), compile="aot_eager", **run)
    assert ("forward", "aot_eager", None) in pipe.unet.__dict__["_diffinv_compiled"]
    assert ("decode", "aot_eager", None) in pipe.vae.__dict__["_diffinv_compiled"]
    _same(fast, eager)
    again = pipe(noise_feats, generator=torch.Generator().manual_seed(2), **run)  # compile is per call
    torch.testing.assert_close(again.images, eager.images)
    with pytest.raises(ValueError, match="`compile` must be"):
        pipe(noise_feats, compile="fastest", **run)


def test_compiled_features_equal_eager_ones(lite0_blocks0_1_anysize):
    """The truncated forward (a torch.fx graph, no hooks) compiles whole: the compiled features are the eager ones."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for layer in ("blocks.0", "blocks.1"):
        fast = compiled_feature(lite0_blocks0_1_anysize, layer, "aot_eager")
        torch.testing.assert_close(fast(images), lite0_blocks0_1_anysize.feature(images, layer), rtol=1e-5, atol=1e-6)
        x = images.clone().requires_grad_()
        fast(x).square().sum().backward()
        y = images.clone().requires_grad_()
        lite0_blocks0_1_anysize.feature(y, layer).square().sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-6)


def test_three_threads_share_one_compiled_target(lite0_blocks0_1_anysize):
    """Three threads run the compiled features of one shared target at once (other layers, other sizes): each gets
    what it gets alone, eager or compiled."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    jobs = {
        "blocks.0": dict(layer="blocks.0"),
        "blocks.1": dict(layer="blocks.1"),
        "blocks.1 at 16": dict(layer="blocks.1", input_size=(16, 16)),
    }
    eager = {name: lite0_blocks0_1_anysize.feature(images, **kwargs) for name, kwargs in jobs.items()}
    calls = {
        name: functools.partial(
            compiled_feature(lite0_blocks0_1_anysize, kwargs["layer"], "aot_eager"),
            images,
            **{k: v for k, v in kwargs.items() if k != "layer"},
        )
        for name, kwargs in jobs.items()
    }
    results = run_in_threads(calls, repeat=4)
    for name, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, eager[name], rtol=1e-5, atol=1e-6)
        assert all(torch.equal(out, outs[0]) for out in outs), name
