"""Bit-identity check of features, splits and tiny-pipeline images across a change (not a pytest module).

    python tests/bit_identity.py save /tmp/before.pt     # before the change
    python tests/bit_identity.py check /tmp/before.pt    # after: every tensor must be torch.equal

Covers: the real EfficientNet-Lite0 at every atlas layer and nested modules, torchvision ResNet-50 (seeded
random weights), a timm ResNet-18 and ViT, plain modules, pixel gradients, the network run from a layer
(``split_logits``), and fixed-seed images of the tiny diffusion pipeline and the diffusion inverter.
"""

import sys

import torch
from nets import SkipNet
from torch import nn

from diffinv.targets import TargetNetwork


class _FixedMapper:
    """A stand-in FeatureMapper: fixed clean latents (the hybrid start ``init="mapper"``)."""

    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    def to(self, device):
        return self

    def initial_latents(self, features):
        return self.latents


def collect() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out = {}
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    lite = TargetNetwork.from_name("tf_efficientnet_lite0", "blocks.2", input_size=(64, 64))
    layers = ["bn1", *(f"blocks.{i}" for i in range(7)), "bn2", "blocks.2.1", "blocks.4.0.conv_pw", "conv_stem"]
    for layer in layers:
        out[f"lite0/{layer}"] = lite.feature(images, layer)
    for name, value in lite.forward(images, ["blocks.1", "blocks.4", "blocks.6"]).items():
        out[f"lite0/multi/{name}"] = value
    out["lite0/at32/blocks.3"] = lite.feature(images, "blocks.3", input_size=(32, 32))
    x = images.clone().requires_grad_()
    lite.feature(x, "blocks.4").pow(2).sum().backward()
    out["lite0/grad/blocks.4"] = x.grad
    clean = lite.feature(images, "blocks.6")
    out["lite0/split/blocks.6"] = lite.split_logits("blocks.6", clean, torch.zeros_like(images))
    out["lite0/logits"] = lite.logits(images)
    out["lite0/classes"] = lite.classify_features(clean, "blocks.6", (64, 64))
    r50 = TargetNetwork.from_name("resnet50", "layer3", weights="random:0", input_size=(64, 64))
    for layer in ("maxpool", "layer1", "layer2", "layer3", "layer4", "layer3.1.conv2", "layer2.0"):
        out[f"resnet50/{layer}"] = r50.feature(images, layer)
    out["resnet50/split/layer4"] = r50.split_logits("layer4", r50.feature(images, "layer4"), torch.zeros_like(images))
    r18 = TargetNetwork.from_name("resnet18", "layer2", weights="random:0", input_size=(64, 64))
    out["timm-resnet18/layer2"] = r18.feature(images)
    vit = TargetNetwork.from_name("vit_tiny_patch16_224", "blocks.3", weights="random:0", input_size=(224, 224))
    out["vit/blocks.3"] = vit.feature(images)
    out["vit/norm"] = vit.feature(images, "norm")
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 4, 3, stride=2), nn.ReLU())
    )
    plain = TargetNetwork(seq, "2.0", input_size=None)
    out["sequential/2.0"], out["sequential/1"] = plain.feature(images), plain.feature(images, "1")
    skip = TargetNetwork(SkipNet(), "body", has_classifier=True, input_size=None)
    out["skip/body"] = skip.feature(images)
    out["skip/split"] = skip.split_logits("body", out["skip/body"], torch.zeros_like(images))

    from diffinv.features import FeatureSet
    from diffinv.inverters.diffusion import DiffusionInverter
    from diffinv.pipelines import load_pipeline

    target = TargetNetwork.from_name("tf_efficientnet_lite0", ["blocks.0", "blocks.1"], input_size=None)
    pipe = load_pipeline("tiny", target=target, layer="blocks.1")
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        made = pipe.render(z, num_inference_steps=2)
    features = FeatureSet.extract(target, made, "blocks.1", sources=["a", "b"])
    run = dict(num_inference_steps=2, iterations=3, output_type="pt")
    result = pipe(features, generator=torch.Generator().manual_seed(2), **run)
    out["pipe/images"], out["pipe/loss"] = result.images, result.loss_history
    result = pipe(features, generator=torch.Generator().manual_seed(3), prompt="a photo", optimize="all", **run)
    out["pipe/all/images"] = result.images
    result = pipe(
        features, generator=torch.Generator().manual_seed(4), init="image", image=made.flip(-1), strength=0.5, **run
    )
    out["pipe/image-start/images"] = result.images
    result = pipe(
        features,
        generator=torch.Generator().manual_seed(9),
        init="mapper",
        mapper=_FixedMapper(z * 0.5),
        strength=0.5,
        **run,
    )
    out["pipe/mapper-start/images"], out["pipe/mapper-start/loss"] = result.images, result.loss_history
    named = load_pipeline("tiny", target="tf_efficientnet_lite0", layer="blocks.1", target_weights="random:0")
    named.set_progress_bar_config(disable=True)
    named_features = FeatureSet.extract(named.target, made, "blocks.1")
    out["named/images"] = named(named_features, generator=torch.Generator().manual_seed(5), **run).images
    inverter = DiffusionInverter(target, model="tiny", device="cpu", num_inference_steps=2, iterations=3)
    inverted = inverter.invert(features, generator=torch.Generator().manual_seed(6), progress=False)
    out["inverter/images"], out["inverter/loss"] = inverted.images, inverted.loss_history
    hybrid = DiffusionInverter(
        target, model="tiny", device="cpu", num_inference_steps=2, iterations=3, start=made.flip(-2)
    )
    inverted = hybrid.invert(features, generator=torch.Generator().manual_seed(7), progress=False)
    out["hybrid/images"] = inverted.images
    stopped = []
    inverted = inverter.invert(
        features,
        generator=torch.Generator().manual_seed(8),
        progress=False,
        callback=lambda i, loss, images: stopped.append(i) or i >= 1,
    )
    out["inverter/stopped/loss"] = inverted.loss_history
    return {k: v.detach().cpu() for k, v in out.items()}


def main(argv: list[str]) -> int:
    mode, path = argv[1], argv[2]
    found = collect()
    if mode == "save":
        torch.save(found, path)
        print(f"saved {len(found)} tensors to {path}")
        return 0
    before = torch.load(path, weights_only=True)
    bad = [k for k in before if k not in found or not torch.equal(before[k], found[k])]
    bad += [k for k in found if k not in before]
    for key in before:
        print(f"{'OK  ' if key not in bad else 'DIFF'} {key} {tuple(before[key].shape)}")
    print(f"{len(before) - len(bad)} of {len(before)} tensors bit-identical" + (f"; different: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
