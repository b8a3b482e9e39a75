"""Defenses (diffinv.defenses): each transform and its strength, composition, parsing, the FeatureSet record,
the utility of a split point, and the adaptive attacker's transform."""

import json

import pytest
import torch
from nets import SkipNet
from safetensors.torch import save_file

from diffinv.defenses import (
    Defense,
    UtilityUnavailable,
    apply_defense,
    parse_defense,
    parse_defenses,
    utility_agreement,
)
from diffinv.features import FeatureSet
from diffinv.targets import TargetNetwork


@pytest.fixture
def scaled_noise_maps():
    torch.manual_seed(0)
    return torch.randn(3, 16, 6, 6) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1) + 2.0


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_none_is_identity(scaled_noise_maps):
    assert parse_defense("none") == Defense() and not Defense() and Defense().spec == "none"
    assert torch.equal(Defense()(scaled_noise_maps, g()), scaled_noise_maps)
    assert torch.equal(parse_defense("noise:0")(scaled_noise_maps, g()), scaled_noise_maps)


def test_noise_std_is_relative_to_each_images_feature_std(scaled_noise_maps):
    for sigma in (0.1, 1.0):
        out = parse_defense(f"noise:{sigma}")(scaled_noise_maps, g())
        ratio = (out - scaled_noise_maps).flatten(1).std(dim=1) / scaled_noise_maps.flatten(1).std(dim=1)
        assert torch.allclose(ratio, torch.full((3,), sigma), rtol=0.1), ratio
    a, b = parse_defense("noise:1")(scaled_noise_maps, g(1)), parse_defense("noise:1")(scaled_noise_maps, g(1))
    assert torch.equal(a, b) and not torch.equal(a, parse_defense("noise:1")(scaled_noise_maps, g(2)))


def test_quantize_has_2_to_the_bits_levels_between_min_and_max(scaled_noise_maps):
    ramp = torch.linspace(-3, 5, 2 * 16 * 6 * 6).view(2, 16, 6, 6)
    for bits in (1, 2, 4):
        out = parse_defense(f"quantize:{bits}")(ramp)
        for i in range(2):
            levels = out[i].unique()
            assert len(levels) == 2**bits
            assert levels.min() == ramp[i].min() and torch.isclose(levels.max(), ramp[i].max())
        step = (ramp.flatten(1).max(1).values - ramp.flatten(1).min(1).values) / (2**bits - 1)
        assert ((out - ramp).abs().flatten(1).max(dim=1).values <= step / 2 + 1e-5).all()
    assert len(parse_defense("quantize:3")(scaled_noise_maps)[1].unique()) <= 8
    constant = torch.ones(1, 4, 2, 2)
    assert torch.equal(parse_defense("quantize:2")(constant), constant)


def test_prune_zeroes_an_exact_fraction_of_channels(scaled_noise_maps):
    for fraction, zeroed in ((0.5, 8), (0.25, 4), (0.0, 0)):
        out = parse_defense(f"prune:{fraction}")(scaled_noise_maps, g())
        dead = (out.flatten(2) == 0).all(dim=2)
        assert dead.sum(dim=1).tolist() == [zeroed] * 3
        assert torch.equal(out[~dead], scaled_noise_maps[~dead])  # the other channels are untouched
    masks = (parse_defense("prune:0.5")(scaled_noise_maps, g()).flatten(2) == 0).all(dim=2)
    assert not torch.equal(masks[0], masks[1]) or not torch.equal(masks[1], masks[2])  # a mask per image


def test_topk_keeps_an_exact_fraction_of_the_largest_entries(scaled_noise_maps):
    for fraction in (0.1, 0.5, 1.0):
        out = parse_defense(f"topk:{fraction}")(scaled_noise_maps)
        k = round(fraction * scaled_noise_maps[0].numel())
        assert (out.flatten(1) != 0).sum(dim=1).tolist() == [k] * 3
        kept = out.flatten(1) != 0
        for i in range(3):
            dropped = scaled_noise_maps[i].flatten()[~kept[i]].abs()
            assert not len(dropped) or scaled_noise_maps[i].flatten()[kept[i]].abs().min() >= dropped.max()
            assert torch.equal(out.flatten(1)[i][kept[i]], scaled_noise_maps.flatten(1)[i][kept[i]])


def test_composition_applies_left_to_right(scaled_noise_maps):
    prune_then_noise = parse_defense("prune:0.5+noise:0.1")
    noise_then_prune = parse_defense("noise:0.1+prune:0.5")
    assert prune_then_noise.spec == "prune:0.5+noise:0.1"
    dead = lambda out: (out.flatten(2) == 0).all(dim=2).sum(dim=1).tolist()  # noqa: E731
    assert dead(noise_then_prune(scaled_noise_maps, g())) == [8] * 3
    assert dead(prune_then_noise(scaled_noise_maps, g())) == [0] * 3
    composed = parse_defense("quantize:2+topk:0.5")(scaled_noise_maps)
    assert torch.equal(composed, parse_defense("topk:0.5")(parse_defense("quantize:2")(scaled_noise_maps)))


def test_parsing_settings_and_clear_errors():
    settings = parse_defenses(
        ["none", "noise:0.1,0.3", "quantize:8,4", "prune:0.5", "topk:0.1", "noise:0.1", "prune:0.5+noise:0.1"]
    )
    assert [d.spec for d in settings] == [
        "none",
        "noise:0.1",
        "noise:0.3",
        "quantize:8",
        "quantize:4",
        "prune:0.5",
        "topk:0.1",
        "prune:0.5+noise:0.1",
    ]
    assert parse_defense(parse_defense("quantize:4+prune:0.25").spec) == parse_defense("quantize:4+prune:0.25")
    assert isinstance(parse_defense("quantize:4").steps[0][1], int)
    for text, match in [
        ("blur:1", "'blur' is not a defense; expected none or one of noise, quantize, prune, topk"),
        ("noise", "'noise' needs a strength, e.g. noise:0.1"),
        ("noise:-1", "must be a finite number >= 0"),
        ("noise:abc", "must be a finite number >= 0"),
        ("noise:inf", "must be a finite number >= 0"),
        ("quantize:0", "integer number of bits in 1..16"),
        ("quantize:2.5", "integer number of bits"),
        ("prune:1", r"fraction of channels in \[0, 1\), got '1'"),
        ("topk:0", r"fraction of entries in \(0, 1\]"),
        ("", "is empty"),
        ("prune:0.5+noise:0.1,0.2", "one strength per part"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_defenses([text])
    with pytest.raises(ValueError, match="no defense setting"):
        parse_defenses([])


def test_straight_through_gradients(scaled_noise_maps):
    x = scaled_noise_maps.clone().requires_grad_(True)
    for spec in ("quantize:2", "topk:0.1"):
        (grad,) = torch.autograd.grad(parse_defense(spec)(x, straight_through=True).sum(), x)
        assert torch.equal(grad, torch.ones_like(x))
        assert torch.allclose(
            parse_defense(spec)(x, straight_through=True).detach(), parse_defense(spec)(scaled_noise_maps)
        )
    (grad,) = torch.autograd.grad(parse_defense("noise:1")(x, g(), straight_through=True).sum(), x)
    assert torch.equal(grad, torch.ones_like(x))


def test_attacker_transform_draws_fresh_noise_and_reads_the_observed_support(scaled_noise_maps):
    noise = parse_defense("noise:1").attacker_transform(scaled_noise_maps, g())
    assert not torch.equal(
        noise(scaled_noise_maps), noise(scaled_noise_maps)
    )  # the expectation over the defense: a new draw per call
    for spec in ("prune:0.5", "topk:0.2", "quantize:3+prune:0.5"):
        defense = parse_defense(spec)
        observed = defense(scaled_noise_maps, g(3))
        transform = defense.attacker_transform(observed, g(4))
        assert torch.equal(transform(scaled_noise_maps), observed), (
            spec
        )  # the true features explain the observation exactly
        assert torch.equal(transform(scaled_noise_maps), transform(scaled_noise_maps))


def test_featureset_records_its_defense(tmp_path, scaled_noise_maps):
    fs = FeatureSet(scaled_noise_maps, "t", "blocks.1", (32, 32), sources=["a", "b", "c"])
    assert fs.defense is None
    defended = apply_defense(fs, parse_defense("noise:0.3"), g())
    assert defended.defense == "noise:0.3" and not torch.equal(defended.features, scaled_noise_maps)
    assert apply_defense(defended, parse_defense("quantize:4")).defense == "noise:0.3+quantize:4"
    assert apply_defense(fs, Defense()) is fs
    loaded = FeatureSet.load(defended.save(tmp_path / "d.safetensors"))
    assert loaded.defense == "noise:0.3" and torch.equal(loaded.features, defended.features)
    # a file written before the field existed loads without a defense
    metadata = {
        "format": "diffinv.FeatureSet",
        "version": "1",
        "target": "t",
        "layer": "blocks.1",
        "input_size": "[32, 32]",
        "dtype": "float32",
        "shape": json.dumps(list(scaled_noise_maps.shape)),
    }
    save_file({"features": scaled_noise_maps.contiguous()}, str(tmp_path / "old.safetensors"), metadata=metadata)
    assert FeatureSet.load(tmp_path / "old.safetensors").defense is None


def test_utility_is_one_without_defense_and_falls_with_strong_noise(lite0_64px, photos_64px):
    images = photos_64px
    clean = lite0_64px.feature(images, "blocks.2")
    assert utility_agreement(lite0_64px, images, "blocks.2", clean, clean).tolist() == [1.0] * len(images)
    assert torch.allclose(
        lite0_64px.split_logits("blocks.2", clean, torch.zeros_like(images)), lite0_64px.logits(images), atol=1e-4
    )
    noisy = parse_defense("noise:30")(clean, g())
    assert utility_agreement(lite0_64px, images, "blocks.2", clean, noisy).mean() < 0.5


class _Twice(SkipNet):
    def forward(self, x):
        return self.head(self.body(self.body(self.stem(x))).mean(dim=(2, 3)))


def test_utility_unavailable_says_why(photos_64px):
    torch.manual_seed(0)
    images = photos_64px[:2]
    skip = TargetNetwork(SkipNet(), "body", has_classifier=True, input_size=None)
    clean = skip.feature(images)
    with pytest.raises(UtilityUnavailable, match="does not reproduce its logits .* skip connection"):
        utility_agreement(skip, images, "body", clean, clean)
    skip.categories = list("abcde")  # the same check keeps the automatic class prompt from a wrong split
    assert skip.classify_features(clean, "body", (64, 64)) is None
    twice = TargetNetwork(_Twice(), "body", has_classifier=True, input_size=None)
    with pytest.raises(UtilityUnavailable, match="runs 2 times in one forward pass"):
        utility_agreement(twice, images, "body", twice.feature(images), twice.feature(images))
    headless = TargetNetwork(SkipNet(), "body", has_classifier=False, input_size=None)
    with pytest.raises(UtilityUnavailable, match="has no classifier head"):
        utility_agreement(headless, images, "body", clean, clean)
