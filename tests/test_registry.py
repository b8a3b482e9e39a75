"""The inverter registry and configs (issue 23): ``build_inverter`` for every method and hybrid, option
errors that name the option, the value and what was expected, ``settings()`` = config + fingerprints,
capabilities read instead of signatures, ``feature_transform`` passed explicitly, the mapper start."""

import dataclasses
import inspect

import pytest
import torch

from diffinv.features import FeatureSet
from diffinv.interpret.param import dip_image
from diffinv.inverters import (
    HYBRID_METHODS,
    INVERTERS,
    DecoderInverter,
    DiffusionConfig,
    DiffusionInverter,
    DIPInverter,
    Inverter,
    InverterConfig,
    MapperInverter,
    OptionError,
    PixelConfig,
    PixelInverter,
    build_inverter,
    inverter_spec,
    method_options,
    optimize,
    options_for,
)
from diffinv.inverters.config import option
from diffinv.inverters.diffusion import PIPELINE_OPTIONS
from diffinv.inverters.pixel import REFINE_LEARNING_RATE
from diffinv.io import fingerprint_path, sample_images, save_image
from diffinv.jobs.video import invert_video
from diffinv.models import FeatureMapper, UpconvNet
from diffinv.pipelines import DiffInvPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "blocks.2"


@pytest.fixture(scope="module")
def chelsea_coffee_random_feats(random_lite0_blocks2_32px):
    return FeatureSet.extract(random_lite0_blocks2_32px, sample_images(("chelsea", "coffee"), 32), LAYER)


@pytest.fixture(scope="module")
def mapper(random_lite0_blocks2_32px, tiny_pipeline):
    return FeatureMapper.for_target(random_lite0_blocks2_32px, LAYER, (32, 32), tiny_pipeline.vae, hidden_channels=16)


# ---------------------------------------------------------------------- build_inverter
def test_build_inverter_for_every_method(random_lite0_blocks2_32px, mapper, tiny_pipeline):
    decoder = UpconvNet.for_target(random_lite0_blocks2_32px, LAYER, (32, 32))
    built = {
        "pixel": build_inverter("pixel", random_lite0_blocks2_32px, iterations=7, tv="anisotropic"),
        "dip": build_inverter("dip", random_lite0_blocks2_32px, iterations=5, channels=[4, 8]),
        "gan": build_inverter("gan", random_lite0_blocks2_32px, gan="tiny:32", restarts=2, iterations=3),
        "decoder": build_inverter("decoder", random_lite0_blocks2_32px, decoder=decoder, batch_size=4),
        "mapper": build_inverter(
            "mapper", random_lite0_blocks2_32px, mapper=mapper, vae=tiny_pipeline.vae, num_inference_steps=4
        ),
        "diffusion": build_inverter(
            "diffusion", random_lite0_blocks2_32px, model=tiny_pipeline, iterations=3, num_inference_steps=2, prompt=""
        ),
    }
    for name, inverter in built.items():
        assert type(inverter) is INVERTERS[name] and isinstance(inverter.config, INVERTERS[name].config_class)
    assert built["pixel"].config.iterations == 7 and built["pixel"].config.tv == "anisotropic"
    assert built["dip"].config.channels == (4, 8)  # a list becomes the config's tuple
    assert built["gan"].config.restarts == 2 and built["gan"].config.gan == "tiny:32"
    assert built["mapper"].config.num_inference_steps == 4
    diffusion = built["diffusion"].config
    assert (diffusion.iterations, diffusion.num_inference_steps, diffusion.prompt, diffusion.init) == (
        3,
        2,
        "",
        "noise",
    )


def test_build_hybrids(random_lite0_blocks2_32px, mapper, tiny_pipeline, tmp_path):
    decoder = UpconvNet.for_target(random_lite0_blocks2_32px, LAYER, (32, 32))
    starts = {
        "decoder": {"decoder": decoder},
        "mapper": {"mapper": mapper, "vae": tiny_pipeline.vae},
        "dip": {"channels": (4, 8)},
        "gan": {"gan": "tiny:32", "restarts": 1},
    }
    built_in = {"diffusion", "pixel", "dip", "gan", "mapper", "decoder"}  # installed plugins add their own hybrids
    for name in [n for n in HYBRID_METHODS if set(n.split("+")) <= built_in]:
        start, refiner = name.split("+")
        chain = {"model": tiny_pipeline, "num_inference_steps": 2} if refiner == "diffusion" else {}
        inverter = build_inverter(name, random_lite0_blocks2_32px, iterations=3, **chain, **starts[start])
        assert type(inverter) is INVERTERS[refiner] and inverter.hybrid
        assert type(inverter.start) is INVERTERS[start] and inverter.start.target is random_lite0_blocks2_32px
        assert inverter.settings()["start"] == inverter.start.settings()
        if refiner == "diffusion":
            assert inverter.config.strength == 0.3 and inverter.config.iterations == 3
            assert inverter.config.init == ("mapper" if start == "mapper" else "image")
        else:  # a pixel refinement: its own step size, the other options shared with the start
            assert inverter.config.learning_rate == REFINE_LEARNING_RATE and inverter.config.iterations == 3
    assert {n.split("+")[1] for n in HYBRID_METHODS} & built_in == {"diffusion", "pixel"}
    # `init=` means the same as the hybrid name; each option reaches every part that takes it
    same = build_inverter(
        "diffusion",
        random_lite0_blocks2_32px,
        model=tiny_pipeline,
        init="dip",
        iterations=4,
        channels=(4, 8),
        strength=0.5,
    )
    assert same.start.config.iterations == 4 and same.config.iterations == 4 and same.config.strength == 0.5
    mapper_start = build_inverter(
        "mapper+diffusion", random_lite0_blocks2_32px, model=tiny_pipeline, mapper=mapper, strength=0.6
    )
    assert (
        mapper_start.config.strength == 0.6 and mapper_start.start.config.strength == 0.0
    )  # the start's own estimate
    image = tmp_path / "start.png"
    save_image(torch.rand(3, 32, 32), image)
    from_file = build_inverter("diffusion", random_lite0_blocks2_32px, model=tiny_pipeline, init=str(image))
    assert from_file.start == [str(image)] and from_file.settings()["start_fingerprint"] == [fingerprint_path(image)]


def test_dip_refined_by_pixel(random_lite0_blocks2_32px, chelsea_coffee_random_feats):
    """``dip+pixel`` = ``pixel`` with ``init="dip"``: DIP runs first (same seed, same images as DIP alone), the
    Fourier pixels start from its images exactly and never end with a higher feature loss than they."""
    refined = build_inverter("dip+pixel", random_lite0_blocks2_32px, iterations=6, channels=(4, 8))
    same = build_inverter("pixel", random_lite0_blocks2_32px, init="dip", iterations=6, channels=(4, 8))
    assert refined.settings() == same.settings() and refined.settings()["start"]["channels"] == [4, 8]
    assert refined.config.learning_rate == REFINE_LEARNING_RATE  # not the plain pixel's 0.05, nor DIP's
    assert refined.start.config.learning_rate == DIPInverter(random_lite0_blocks2_32px).config.learning_rate
    dip = DIPInverter(random_lite0_blocks2_32px, iterations=6, channels=(4, 8))(
        chelsea_coffee_random_feats, generator=torch.Generator().manual_seed(0), progress=False
    )
    out = refined(chelsea_coffee_random_feats, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.info["start_method"] == "dip" and out.info["start_info"]["optimize_seconds"] > 0
    assert (out.feature_residual < dip.feature_residual).all()  # refined from DIP's images, to a lower loss
    assert (out.images - dip.images).abs().max() > 1e-3  # refined, not DIP's images returned as they were
    plain = build_inverter("pixel", random_lite0_blocks2_32px, iterations=6)(
        chelsea_coffee_random_feats, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert (
        not PixelInverter(random_lite0_blocks2_32px).hybrid
        and "start" not in PixelInverter(random_lite0_blocks2_32px).settings()
    )
    assert (out.images - plain.images).abs().max() > 1e-3


def test_option_errors_name_the_option_the_value_and_what_is_expected(random_lite0_blocks2_32px, tmp_path):
    with pytest.raises(
        OptionError,
        match=r"method 'pixel' has no option `decoder`; its options are: iterations, "
        r"parameterization, learning_rate, tv_weight, tv, tv_beta, jitter, loss, "
        r"lr_schedule, decay_power, temporal_weight, compile, start\.",
    ):
        build_inverter("pixel", random_lite0_blocks2_32px, decoder="x")
    with pytest.raises(ValueError, match=r"method 'pixel': `iterations` must be a positive integer, got 0\."):
        build_inverter("pixel", random_lite0_blocks2_32px, iterations=0)
    with pytest.raises(ValueError, match=r"method 'dip': `loss` must be one of 'nmse', 'mse', 'cosine', got 'l1'\."):
        build_inverter("dip", random_lite0_blocks2_32px, loss="l1")
    with pytest.raises(ValueError, match=r"method 'gan': `truncation` must be a number in \(0, 1\]"):
        inverter_spec("gan", gan="tiny", truncation=1.5)  # checked before anything is loaded
    with pytest.raises(
        ValueError,
        match=r"`method` 'nope' is not one of diffusion, pixel, dip, gan, mapper, decoder, "
        r"(.*, )?dip\+diffusion",
    ):  # (installed plugins listed too)
        build_inverter("nope", random_lite0_blocks2_32px)
    with pytest.raises(ValueError, match="method 'decoder' needs `decoder`: a trained decoder or its folder"):
        build_inverter("decoder", random_lite0_blocks2_32px)
    with pytest.raises(ValueError, match="method 'diffusion' needs `model`"):
        build_inverter("diffusion", random_lite0_blocks2_32px)
    with pytest.raises(FileNotFoundError):
        inverter_spec("decoder", decoder=tmp_path / "missing")
    with pytest.raises(
        ValueError,
        match=r"`init` 'pixel' starts a refinement \(diffusion, pixel(, \w+)*\); it does not apply "
        r"to method 'dip'",
    ):
        build_inverter("dip", random_lite0_blocks2_32px, init="pixel")
    with pytest.raises(ValueError, match=r"`init` 'pixel': a refinement starts from one of dip, gan, mapper, decoder"):
        build_inverter("pixel", random_lite0_blocks2_32px, init="pixel")
    with pytest.raises(ValueError, match="method 'dip\\+diffusion' starts from dip, but `init` is 'gan'"):
        build_inverter("dip+diffusion", random_lite0_blocks2_32px, model="tiny", init="gan")
    with pytest.raises(ValueError, match=r"`strength` 0 with a hybrid start.*expected \(0, 1\]"):
        build_inverter("dip+diffusion", random_lite0_blocks2_32px, model="tiny", strength=0)
    with pytest.raises(ValueError, match="`init` 'pixel': a refinement starts from one of dip, gan, mapper, decoder"):
        build_inverter("diffusion", random_lite0_blocks2_32px, model="tiny", init="pixel")
    with pytest.raises(ValueError, match="neither one of dip, gan, mapper, decoder nor an existing image file"):
        build_inverter("diffusion", random_lite0_blocks2_32px, model="tiny", init=str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match="method 'dip\\+diffusion' has no option `decoder`"):
        build_inverter("dip+diffusion", random_lite0_blocks2_32px, model="tiny", decoder="x")
    # the classes check their options the same way
    with pytest.raises(ValueError, match=r"method 'diffusion' has no option `init`"):
        DiffusionInverter(
            random_lite0_blocks2_32px, "tiny", device="cpu", init="image"
        )  # set by `start`, not an option
    with pytest.raises(ValueError, match=r"method 'pixel': `tv` must be one of 'isotropic', 'anisotropic', got 'x'"):
        PixelInverter(random_lite0_blocks2_32px, tv="x")


def test_options_for_keeps_what_the_method_takes():
    flags = {"iterations": 5, "steps": None, "decoder": "d", "gan": "biggan-deep-128", "truncation": 0.7}
    assert options_for("pixel", **flags) == {"iterations": 5}
    assert options_for("gan", **flags) == {"iterations": 5, "gan": "biggan-deep-128", "truncation": 0.7}
    assert options_for("diffusion", init="decoder", **flags) == {"init": "decoder", "iterations": 5, "decoder": "d"}
    assert "decoder" in method_options("decoder+diffusion") and "gan" not in method_options("decoder+diffusion")


# ---------------------------------------------------------------------- configs and settings
def test_settings_are_the_config_and_the_fingerprints(random_lite0_blocks2_32px, tmp_path):
    pixel = PixelInverter(random_lite0_blocks2_32px, iterations=7, compile=True)
    assert pixel.settings() == {"method": "pixel", **dataclasses.asdict(pixel.config)}
    # the values the parameterization fills in are recorded (the Fourier default's own schedule and priors)
    assert (pixel.settings()["learning_rate"], pixel.settings()["jitter"], pixel.settings()["decay_power"]) == (
        0.05,
        0,
        None,
    )
    # the sigmoid parameterization: the keys and values of the manifests written before the configs, and the new
    # keys that say which parameterization made them (pixel run folders of before the Fourier default are refused)
    sigmoid = PixelInverter(random_lite0_blocks2_32px, iterations=7, compile=True, parameterization="sigmoid")
    assert sigmoid.settings() == {
        "method": "pixel",
        "compile": True,
        "iterations": 7,
        "jitter": 1,
        "learning_rate": 0.1,
        "loss": "nmse",
        "temporal_weight": 0.0,
        "tv": "isotropic",
        "tv_beta": 2.0,
        "tv_weight": 0.05,
        "parameterization": "sigmoid",
        "lr_schedule": True,
        "decay_power": None,
    }
    dip = DIPInverter(random_lite0_blocks2_32px, channels=(4, 8))
    assert dip.settings()["channels"] == [4, 8] and dip.config.channels == (4, 8)
    UpconvNet.for_target(random_lite0_blocks2_32px, LAYER, (32, 32)).save_pretrained(tmp_path / "dec")
    decoder = DecoderInverter(random_lite0_blocks2_32px, decoder=tmp_path / "dec", batch_size=4)
    assert decoder.settings() == {
        "method": "decoder",
        "batch_size": 4,
        "path": str(tmp_path / "dec"),
        "path_fingerprint": fingerprint_path(tmp_path / "dec"),
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        pixel.config.iterations = 3  # a setting cannot drift after the manifest is written
    assert pixel.config.replace(iterations=3).iterations == 3
    with pytest.raises(ValueError, match="method 'pixel' has no option `steps`"):
        pixel.config.replace(steps=3)


def test_diffusion_config_holds_the_pipeline_call_options(random_lite0_blocks2_32px, tiny_pipeline):
    call = inspect.signature(DiffInvPipeline.__call__).parameters
    assert set(PIPELINE_OPTIONS) <= set(call)
    assert {name: call[name].default for name in PIPELINE_OPTIONS} == DiffusionConfig().call_options()
    inverter = DiffusionInverter(random_lite0_blocks2_32px, tiny_pipeline, iterations=3, temporal_weight=2.0)
    settings = inverter.settings()
    assert settings["torch_dtype"] == "torch.float32" and settings["model"] == "DiffInvPipeline"
    assert {k: settings[k] for k in PIPELINE_OPTIONS} == inverter.config.call_options()
    assert "keep_start" not in settings and inverter.config.temporal and inverter.config.temporal_weight == 2.0


def test_capabilities(random_lite0_blocks2_32px):
    assert PixelConfig.accepts_init and PixelConfig.accepts_anchor and PixelConfig.accepts_feature_transform
    assert not DiffusionConfig.accepts_feature_transform and not DiffusionConfig.streams_images
    assert INVERTERS["gan"].config_class.accepts_feature_transform and not INVERTERS["gan"].config_class.accepts_init
    assert not INVERTERS["decoder"].config_class.accepts_feature_transform
    assert not INVERTERS["gan"].config_class().temporal and PixelConfig().temporal
    with pytest.raises(ValueError, match="method 'decoder' takes no `init`"):
        DecoderInverter(
            random_lite0_blocks2_32px, decoder=UpconvNet.for_target(random_lite0_blocks2_32px, LAYER, (32, 32))
        ).invert(torch.zeros(1, 40, 2, 2), (32, 32), init=torch.zeros(1, 3, 32, 32), progress=False)


# ---------------------------------------------------------------------- feature_transform, passed explicitly
def test_feature_transform_reaches_optimize_explicitly(random_lite0_blocks2_32px, chelsea_coffee_random_feats):
    calls = []

    def transform(predicted):
        calls.append(predicted.shape)
        return predicted * 0

    out = PixelInverter(random_lite0_blocks2_32px, iterations=2).invert(
        chelsea_coffee_random_feats, progress=False, feature_transform=transform
    )
    assert len(calls) >= 2 and torch.isfinite(out.images).all()
    image = torch.full((2, 3, 32, 32), 0.5, requires_grad=True)
    calls.clear()
    optimize(
        [image],
        lambda: image,
        random_lite0_blocks2_32px,
        chelsea_coffee_random_feats.features,
        LAYER,
        iterations=1,
        lr=0.1,
        progress=False,
        feature_transform=transform,
    )
    assert calls == [chelsea_coffee_random_feats.features.shape]
    plain = PixelInverter(random_lite0_blocks2_32px, iterations=2).invert(
        chelsea_coffee_random_feats, progress=False
    )  # no transform left behind
    assert not torch.equal(plain.loss_history, out.loss_history) and len(calls) == 1


# ---------------------------------------------------------------------- the mapper start, from its latents
def test_mapper_start_begins_from_the_mapper_latents(
    random_lite0_blocks2_32px, chelsea_coffee_random_feats, mapper, tiny_pipeline, monkeypatch
):
    seen = {}
    call = DiffInvPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(DiffInvPipeline, "__call__", spy)
    start = MapperInverter(random_lite0_blocks2_32px, mapper=mapper, vae=tiny_pipeline.vae)
    hybrid = DiffusionInverter(
        random_lite0_blocks2_32px,
        tiny_pipeline,
        start=start,
        keep_start=False,
        num_inference_steps=4,
        iterations=2,
        prompt="",
    )
    out = hybrid.invert(chelsea_coffee_random_feats, generator=torch.Generator().manual_seed(0), progress=False)
    assert seen["init"] == "mapper" and seen["mapper"] is mapper and "image" not in seen  # no decode + re-encode
    assert hybrid.settings()["init"] == "mapper" and out.info["start_method"] == "mapper"
    direct = tiny_pipeline(
        chelsea_coffee_random_feats,
        init="mapper",
        mapper=mapper,
        strength=0.3,
        num_inference_steps=4,
        iterations=2,
        prompt="",
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    torch.testing.assert_close(out.images, direct.images.float(), rtol=0, atol=1e-6)
    # a refining mapper (strength > 0) is an image estimate like any other
    assert not MapperInverter(
        random_lite0_blocks2_32px, mapper=mapper, vae=tiny_pipeline.vae, pipe=tiny_pipeline, strength=0.5
    ).latent_start


# ---------------------------------------------------------------------- the video job reads capabilities
@dataclasses.dataclass(frozen=True)
class _AnchoredConfig(InverterConfig):
    method = "anchored"
    accepts_init = True
    accepts_anchor = True
    temporal_weight: float = option(0.0, "non_negative")


class _Anchored(Inverter):
    """Returns grey (or ``init``); records the options each window received."""

    name = "anchored"
    config_class = _AnchoredConfig

    def __init__(self, target, **options):
        super().__init__(target, **options)
        self.calls = []

    def _reconstruct(self, features, layer, size, *, generator, progress, init=None, anchor=None):
        self.calls.append({"init": init is not None, "anchor": anchor is not None})
        images = torch.full((len(features), 3, *size), 0.5) if init is None else init
        return images, torch.zeros(1, len(features)), {}


class _Plain(_Anchored):
    config_class = InverterConfig  # no temporal_weight, no init, no anchor


def test_video_reads_capabilities_from_the_config(random_lite0_blocks2_32px, chelsea_coffee_random_feats):
    frames = FeatureSet(
        chelsea_coffee_random_feats.features.repeat(2, 1, 1, 1), random_lite0_blocks2_32px.name, LAYER, (32, 32)
    )
    smooth = _Anchored(random_lite0_blocks2_32px, temporal_weight=1.0)
    out = invert_video(smooth, frames, window=2, progress=False)
    assert out.summary["settings"]["boundary"] == "anchor" and out.summary["settings"]["temporal_weight"] == 1.0
    assert smooth.calls == [{"init": False, "anchor": False}, {"init": True, "anchor": True}]
    assert smooth.config.temporal_weight == 1.0  # read, never set
    # no temporal_weight in the config: independent frames, no warm start
    out = invert_video(_Plain(random_lite0_blocks2_32px), frames, window=2, warm_start=True, progress=False)
    assert out.summary["settings"]["temporal_weight"] == 0.0 and out.summary["settings"]["boundary"] == "none"
    assert out.summary["settings"]["warm_start"] is False  # asked for, but the config does not accept `init`


# ---------------------------------------------------------------------- one DIP size check
def test_one_dip_size_check_for_the_inverter_and_the_parameterization(random_lite0_blocks2_32px):
    with pytest.raises(ValueError, match=r"DIP needs `image_size` divisible by 16 \(its 4 levels\), got \(40, 40\)"):
        DIPInverter(random_lite0_blocks2_32px).check_image_size((40, 40))
    with pytest.raises(ValueError, match=r"DIP needs `size` divisible by 4 \(its 2 levels\), got \(6, 8\)"):
        dip_image(1, (6, 8), channels=(4, 8))
