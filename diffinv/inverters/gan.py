"""GAN latent inversion: optimize a generator's latent ``z`` (and class embedding) so that N(G(z)) matches.

The prior is the GAN's learned image manifold (BigGAN-deep on ImageNet classes, or any
``nn.Module`` generator). The class of a class-conditional generator starts from the target's
own prediction when the target can classify the features (as the diffusion prior's automatic
prompt does), otherwise from a random class per restart. The truncation trick bounds the
latent: ``z = latent_bound * tanh(w)`` is optimized through ``w``, so ``z`` never leaves the
region the generator was sampled from. Several random restarts run as one batch; each image
keeps its best restart (best of R, as in Huh et al., ECCV 2020, who invert BigGAN from
several seeds because the latent landscape is far from convex).

Example:
    >>> out = GANInverter(target, gan="path/to/biggan-deep-128", restarts=4)(feature_set)
    >>> out.info["classes"], out.info["best_restart"]
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..models.gan import (
    BigGANGenerator,
    GANFilesNotFoundError,
    GANGenerator,
    ModuleGenerator,
    biggan_files,
    is_random_biggan,
    load_biggan,
)
from ..targets import TargetNetwork
from .base import Inverter
from .config import FEATURE_LOSSES, InverterConfig, OptionError, option
from .optimizing import optimize

__all__ = ["GANConfig", "GANInverter"]

DEFAULT_TRUNCATION = 0.7
DEFAULT_RESTARTS = 4
# BigGAN-deep per generated pixel and restart: its activations (leaf-module outputs of BigGAN-deep-128,
# measured with activation_bytes: 8.5 KB), rounded up; its weights (50-56M parameters, float32) with room.
_GAN_BYTES_PER_PIXEL = 10_000
_GAN_WEIGHTS = 400 * 2**20


@dataclasses.dataclass(frozen=True)
class GANConfig(InverterConfig):
    """The GAN inverter's hyper-parameters (as the inverter uses them: ``gan`` is the generator's
    name or folder, ``truncation`` and ``optimize_class`` what the loaded generator allows).

    Attributes:
        gan: a BigGAN folder, a name of :data:`~diffinv.models.gan.BIGGAN_MODELS` in the package's
            cache, or ``"tiny"``/``"tiny:RES"`` (a small random BigGAN: tests, timing).
        truncation: BigGAN's truncation in (0, 1] (default 0.7): smaller gives more typical,
            less varied images; inversion needs to reach an arbitrary image, so the default sits
            above the 0.4-0.5 usual for sampling.
        restarts: R random starts per image, optimized together; each image keeps the one with the
            lowest loss (default 4).
        iterations: optimization steps (default 200).
        learning_rate: Adam step size on the latent parameters.
        optimize_class: also optimize the class embedding (class-conditional generators).
        classes: the starting class (an int, or one per image); default the target's prediction
            from the features when it can classify them and the GAN has as many classes, else a
            random class per restart.
        loss: feature loss, ``"nmse"``, ``"mse"`` or ``"cosine"``.
    """

    method = "gan"
    folders = ("gan",)
    accepts_feature_transform = True
    streams_images = True  # the callback's render() gives the generator's current images (optimize)

    gan: str = option(
        "biggan-deep-128",
        "str",
        help="a BigGAN folder (config.json + pytorch_model.bin), biggan-deep-128/256/512 from the local "
        "pytorch-pretrained-biggan cache, or tiny / tiny:RES (random weights: for trying the path "
        "and timing)",
    )
    truncation: float | None = option(DEFAULT_TRUNCATION, "optional_truncation", help="BigGAN truncation in (0, 1]")
    restarts: int = option(DEFAULT_RESTARTS, "positive_int", help="random restarts per image, the best kept")
    iterations: int = option(200, "positive_int", help="optimization iterations")
    learning_rate: float = option(0.05, "non_negative")
    optimize_class: bool = option(True, "bool")
    classes: list[int] | None = option(None, "classes")
    loss: str = option("nmse", choices=FEATURE_LOSSES)


class GANInverter(Inverter):
    """White-box inversion through a GAN's latent space.

    Args:
        target: the network whose features are inverted.
        gan: the generator: what :attr:`GANConfig.gan` names, a
            :class:`~diffinv.models.gan.GANGenerator`, or any ``nn.Module`` ``G(z) -> images in [-1, 1]``
            (see ``z_dim``, ``output_range``); default the config's (``biggan-deep-128``).
        config: a :class:`GANConfig` (default: its defaults).
        z_dim, output_range: for a plain ``nn.Module`` generator (see
            :class:`~diffinv.models.gan.ModuleGenerator`).
        cache_dir: another folder to look for cached BigGAN files in.
        **options: fields of :class:`GANConfig` (``truncation``, ``restarts``, ``iterations``, ...).

    Raises:
        GANFilesNotFoundError: the BigGAN weights are not on this machine (how to provide them is
            in the message).
        ValueError: an option :class:`GANConfig` does not have, or a value it refuses.
    """

    name = "gan"
    config_class = GANConfig
    extra_options = ("z_dim", "output_range", "cache_dir")
    roles = frozenset({"start"})

    @classmethod
    def check_options(cls, options):
        """A ``gan`` name or folder: ``tiny[:RES]`` with a valid RES, or the BigGAN files on this machine."""
        gan = options.get("gan", GANConfig.gan)
        if not isinstance(gan, (str, os.PathLike)):
            return
        gan = os.fspath(gan)
        if is_random_biggan(gan):
            resolution = gan.partition(":")[2] or "128"
            if not resolution.isdigit() or int(resolution) < 8 or not math.log2(int(resolution) / 4).is_integer():
                raise OptionError(cls.name, "gan", gan, "tiny or tiny:RES with RES 4 times a power of two (8 ... 512)")
            return
        try:
            biggan_files(gan, cache_dir=options.get("cache_dir"))
        except GANFilesNotFoundError as err:
            raise OptionError(cls.name, "gan", gan, message=f"`gan` {gan!r}: {err}") from None

    @classmethod
    def memory_cost(cls, options, shape):
        """The generator's weights and its activations for every restart of one batch."""
        gan = str(options.get("gan") or GANConfig.gan)
        resolution = gan.rpartition(":" if gan.startswith("tiny") else "-")[2]
        resolution = int(resolution) if resolution.isdigit() else 128 if gan.startswith("tiny") else 256
        restarts = options.get("restarts") or GANConfig.restarts
        return {"gan": _GAN_WEIGHTS + _GAN_BYTES_PER_PIXEL * resolution**2 * shape.batch * restarts}

    def __init__(
        self,
        target: TargetNetwork,
        gan: str | os.PathLike | nn.Module | None = None,
        *,
        config: GANConfig | None = None,
        z_dim: int | None = None,
        output_range: str = "tanh",
        cache_dir: str | os.PathLike | None = None,
        **options,
    ):
        super().__init__(target, config, **options)
        c = self.config
        gan = c.gan if gan is None else gan
        if isinstance(gan, GANGenerator):
            generator = gan
        elif isinstance(gan, nn.Module) and type(gan).__name__ == "BigGAN":
            generator = BigGANGenerator(gan, c.truncation)
        elif isinstance(gan, nn.Module):
            generator = ModuleGenerator(gan, z_dim, output_range)
        else:
            generator = load_biggan(gan, truncation=c.truncation, cache_dir=cache_dir)
        self._generator = generator.to(self.device)
        name = gan if isinstance(gan, str) else os.fspath(gan) if isinstance(gan, os.PathLike) else generator.name
        self.config = dataclasses.replace(
            c,
            gan=name,
            truncation=getattr(generator, "truncation", None),
            optimize_class=c.optimize_class and generator.embed_dim > 0,
        )

    @property
    def generator(self) -> GANGenerator:
        """The frozen generator (on the target's device)."""
        return self._generator

    def start_classes(
        self, features: torch.Tensor, layer: str, size: tuple[int, int], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, str]:
        """``(N * R,)`` starting classes (image-major) and where they came from."""
        n, r, gan, given = len(features), self.config.restarts, self.generator, self.config.classes
        if given is not None:
            if len(given) not in (1, n) or not all(0 <= int(c) < gan.num_classes for c in given):
                raise ValueError(
                    f"`classes` must be one class or one per image ({n}), each in [0, {gan.num_classes}), "
                    f"got {given!r}."
                )
            classes = (
                torch.tensor([int(c) for c in given]).expand(n)
                if len(given) == 1
                else torch.tensor([int(c) for c in given])
            )
            return classes.repeat_interleave(r), "given"
        categories = self.target.categories
        if categories is not None and len(categories) == gan.num_classes:
            predicted = self.target.classify_features(features, layer, size)
            if predicted is not None:
                return predicted.repeat_interleave(r), "predicted"
        return torch.randint(0, gan.num_classes, (n * r,), generator=generator), "random"

    def _reconstruct(self, features, layer, size, *, generator, progress, feature_transform=None):
        c = self.config
        n, r, gan = len(features), c.restarts, self.generator
        device = self.device

        # 1. Starting points: R per image (rows image-major), z drawn as the generator was sampled
        z0 = gan.sample_latents(n * r, generator).to(device)
        bound = gan.latent_bound
        if bound is None:
            w = z0.clone()
        else:  # z = bound * tanh(w): the truncation region, with a gradient everywhere
            w = torch.atanh((z0 / bound).clamp(-0.999, 0.999))
        params = [w]
        classes, class_source = (None, "none")
        embed = None
        if gan.embed_dim > 0:
            classes, class_source = self.start_classes(features, layer, size, generator)
            embed = gan.class_embeddings(classes).to(device).float()
            if c.optimize_class:
                params.append(embed)

        def render() -> torch.Tensor:
            z = w if bound is None else bound * torch.tanh(w)
            images = gan(z, embed)
            if tuple(images.shape[-2:]) != tuple(size):
                images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
            return images

        # 2. One optimization of every restart at once (the best iterate of each row is kept)
        images, history, info = optimize(
            params, render, self.target, features.repeat_interleave(r, dim=0), layer,
            iterations=c.iterations, lr=c.learning_rate, loss=c.loss, desc=f"gan {layer}", progress=progress,
            feature_transform=feature_transform,
        )  # fmt: skip

        # 3. Best of R per image
        best = torch.tensor(info.pop("best_loss")).view(n, r)
        pick = best.nan_to_num(float("inf")).argmin(dim=1)
        rows = torch.arange(n) * r + pick
        images = images[rows]
        history = history.view(len(history), n, r)[:, torch.arange(n), pick]
        info.update(
            best_loss=best[torch.arange(n), pick].tolist(),
            best_restart=pick.tolist(),
            restarts=r,
            classes=None if classes is None else classes.view(n, r)[torch.arange(n), pick].tolist(),
            class_source=class_source,
            latents=(w if bound is None else bound * torch.tanh(w)).detach()[rows].cpu(),
        )
        return images, history, info
