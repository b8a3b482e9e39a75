"""GAN generators for latent inversion: BigGAN (``pytorch-pretrained-biggan``) or any ``nn.Module``.

:class:`GANGenerator` is the one view the GAN inverter needs: a latent size ``z_dim``, an optional
class embedding (``embed_dim > 0`` for a class-conditional generator), how latents are drawn
(:meth:`~GANGenerator.sample_latents`, with the truncation trick) and ``forward(z, embed)`` ->
images in [0, 1].

* :class:`BigGANGenerator` wraps BigGAN-deep of the PyPI package ``pytorch-pretrained-biggan``;
  :func:`load_biggan` loads real weights from a local folder or the package's own cache, never
  downloading, and builds a small random BigGAN (``"tiny"``) for tests and timing;
* :class:`ModuleGenerator` wraps any ``nn.Module`` ``G(z) -> images``.

Example:
    >>> gan = load_biggan("path/to/biggan-deep-128", truncation=0.7)
    >>> images = gan(gan.sample_latents(4), gan.class_embeddings(torch.tensor([285] * 4)))
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BIGGAN_MODELS",
    "BigGANGenerator",
    "GANFilesNotFoundError",
    "GANGenerator",
    "ModuleGenerator",
    "biggan_files",
    "is_random_biggan",
    "load_biggan",
    "small_biggan_config",
]

_BIGGAN_URL = "https://s3.amazonaws.com/models.huggingface.co/biggan/{name}-{file}"
BIGGAN_MODELS = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")
TINY = "tiny"
_WEIGHTS, _CONFIG = "pytorch_model.bin", "config.json"


def gan_how_to_provide(name: str = "biggan-deep-128") -> str:
    return (
        f"Offline, provide the BigGAN weights as a folder with {_CONFIG} and {_WEIGHTS}: on a machine with internet "
        f"download {_BIGGAN_URL.format(name=name, file='config.json')} as DIR/{_CONFIG} and "
        f"{_BIGGAN_URL.format(name=name, file='pytorch_model.bin')} as DIR/{_WEIGHTS}, copy DIR here and pass its "
        f"path (`--gan DIR`); or run `pytorch_pretrained_biggan.BigGAN.from_pretrained({name!r})` online once to fill "
        f"its cache (~/.pytorch_pretrained_biggan, or $PYTORCH_PRETRAINED_BIGGAN_CACHE) and copy that folder here. "
        f"`--gan tiny` builds a small random BigGAN (no weights) to try the path and time it."
    )


class GANFilesNotFoundError(FileNotFoundError):
    """The GAN's weights are not on this machine (and are never downloaded at run time)."""


def _biggan_package():
    try:
        import pytorch_pretrained_biggan
    except ImportError as err:
        raise ImportError(
            "the BigGAN prior needs the PyPI package `pytorch-pretrained-biggan`: `pip install 'diffinv[gan]'` "
            f"(or `pip install pytorch-pretrained-biggan`) ({err})."
        ) from err
    return pytorch_pretrained_biggan


class GANGenerator(nn.Module):
    """A frozen generator seen as ``forward(z, embed) -> images (N, 3, H, W) in [0, 1]``.

    Attributes:
        z_dim: size of the latent ``z``.
        embed_dim: size of the class embedding (0: unconditional).
        num_classes: classes of a conditional generator (0: unconditional).
        resolution: ``(H, W)`` of its images.
        latent_bound: ``|z|`` stays below it (the truncation trick), or ``None`` (unbounded).
    """

    z_dim: int = 0
    embed_dim: int = 0
    num_classes: int = 0
    resolution: tuple[int, int] = (0, 0)
    latent_bound: float | None = None

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, z_dim)`` latents on the CPU: standard normal (a truncated one when bounded)."""
        z = torch.randn(n, self.z_dim, generator=generator)
        if self.latent_bound is None:
            return z
        return truncated_normal((n, self.z_dim), generator) * (self.latent_bound / 2)

    def class_embeddings(self, classes: torch.Tensor) -> torch.Tensor | None:
        """``(N, embed_dim)`` embeddings of class indices; ``None`` for an unconditional generator."""
        return None

    def forward(self, z: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def truncated_normal(shape, generator: torch.Generator | None = None, bound: float = 2.0) -> torch.Tensor:
    """Standard normal values redrawn until they lie in ``[-bound, bound]`` (BigGAN's truncated noise)."""
    z = torch.randn(shape, generator=generator)
    outside = z.abs() > bound
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > bound
    return z


class BigGANGenerator(GANGenerator):
    """BigGAN-deep (Brock et al., ICLR 2019) of ``pytorch-pretrained-biggan``, frozen, in eval mode.

    Args:
        model: a ``pytorch_pretrained_biggan.BigGAN``.
        truncation: in (0, 1]: latents are drawn from a normal truncated to ``[-2, 2]`` and scaled
            by it, and the batch-norm statistics of that truncation are used (the
            fidelity/variety trade-off of the BigGAN paper); ``latent_bound = 2 * truncation``.
        name: where the weights came from (recorded in run manifests).
    """

    def __init__(self, model: nn.Module, truncation: float = 0.7, name: str = "custom"):
        super().__init__()
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
            raise ValueError(f"`truncation` must be a number in (0, 1], got {truncation!r}.")
        self.model = model.eval().requires_grad_(False)
        self.truncation, self.name = float(truncation), name
        config = model.config
        self.z_dim, self.embed_dim, self.num_classes = int(config.z_dim), int(config.z_dim), int(config.num_classes)
        self.resolution = (int(config.output_dim), int(config.output_dim))
        self.latent_bound = 2.0 * self.truncation

    def class_embeddings(self, classes: torch.Tensor) -> torch.Tensor:
        # embeddings is Linear(num_classes -> z_dim, no bias): the embedding of a one-hot class is a weight column
        return self.model.embeddings.weight.t()[classes.to(self.model.embeddings.weight.device)].clone()

    def forward(self, z: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        if embed is None:
            raise ValueError("BigGAN is class-conditional: `embed` (from `class_embeddings`) is required.")
        images = self.model.generator(torch.cat([z, embed], dim=1), self.truncation)
        return (images.float() + 1) / 2


class ModuleGenerator(GANGenerator):
    """Any generator ``module(z) -> images`` (unconditional), e.g. a StyleGAN mapping+synthesis wrapper.

    Args:
        module: the generator; frozen and put in eval mode.
        z_dim: size of its latent (default: ``module.z_dim`` or ``module.latent_dim``).
        output_range: ``"tanh"`` (images in [-1, 1], the usual GAN output) or ``"unit"`` ([0, 1]).
        latent_bound: truncate latents to ``[-latent_bound, latent_bound]`` (``None``: a standard normal).
    """

    def __init__(
        self,
        module: nn.Module,
        z_dim: int | None = None,
        output_range: str = "tanh",
        latent_bound: float | None = None,
    ):
        super().__init__()
        z_dim = z_dim or getattr(module, "z_dim", None) or getattr(module, "latent_dim", None)
        if not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(
                f"`z_dim` is required for a {type(module).__name__} generator (it has no `z_dim` or "
                f"`latent_dim` attribute), got {z_dim!r}."
            )
        if output_range not in ("tanh", "unit"):
            raise ValueError(f"`output_range` must be 'tanh' ([-1, 1]) or 'unit' ([0, 1]), got {output_range!r}.")
        self.module = module.eval().requires_grad_(False)
        self.z_dim, self.output_range, self.latent_bound = z_dim, output_range, latent_bound
        self.name = type(module).__name__
        with torch.no_grad():
            probe = self(torch.zeros(1, z_dim, device=next(module.parameters(), torch.empty(0)).device))
        if probe.ndim != 4 or probe.shape[1] != 3:
            raise ValueError(f"the generator must return (N, 3, H, W) images, got shape {tuple(probe.shape)}.")
        self.resolution = tuple(probe.shape[-2:])

    def forward(self, z: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        images = self.module(z).float()
        return (images + 1) / 2 if self.output_range == "tanh" else images


def small_biggan_config(resolution: int = 128, channel_width: int = 8, z_dim: int = 32, num_classes: int = 1000):
    """A small BigGAN-deep configuration (same blocks, few channels, no attention) for tests and timing.

    ``resolution`` must be 4 times a power of two (8, 16, 32, 64, 128, ...).
    """
    ups = math.log2(resolution / 4) if resolution >= 8 else -1
    if not float(ups).is_integer() or ups < 1:
        raise ValueError(f"`resolution` must be 4 times a power of two (8, 16, ..., 128), got {resolution!r}.")
    ups = int(ups)
    count = max(ups, 4)  # the channel multiplier halves from 16 to 1, as in BigGAN-deep
    outs = [max(1, 16 >> (i + 1)) for i in range(count)]
    layers = [(i >= count - ups, ins, out) for i, (ins, out) in enumerate(zip([16] + outs[:-1], outs))]
    config = _biggan_package().BigGANConfig(
        output_dim=resolution, z_dim=z_dim, class_embed_dim=z_dim, channel_width=channel_width,
        num_classes=num_classes, layers=layers, attention_layer_position=count + 1,
    )  # fmt: skip
    return config


def random_biggan(resolution: int = 128, *, truncation: float = 0.7, seed: int = 0, **config) -> BigGANGenerator:
    """A small BigGAN with seeded random weights (:func:`small_biggan_config`); the global RNG is left as it was."""
    package = _biggan_package()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = package.BigGAN(small_biggan_config(resolution, **config))
        nn.init.ones_(model.generator.bn.weight)  # the package leaves the last (unconditional) norm uninitialized
        nn.init.zeros_(model.generator.bn.bias)
        # spectral norm's power iteration runs in train mode only: converge it so that the frozen
        # (eval mode) random generator divides each weight by its real spectral norm
        model.train()
        with torch.no_grad():
            one_hot = torch.zeros(1, model.config.num_classes)
            one_hot[0, 0] = 1
            for _ in range(10):
                model(torch.zeros(1, model.config.z_dim), one_hot, truncation)
        model.eval()
        _calibrate_batch_norms(model, truncation)
    return BigGANGenerator(model, truncation, name=f"{TINY}:{resolution}:{seed}")


@torch.no_grad()
def _calibrate_batch_norms(model: nn.Module, truncation: float, samples: int = 32) -> None:
    """Sets every batch norm's statistics (at all truncations) to those of its input on random samples, in
    network order, as BigGAN's released statistics were measured: a random generator then makes images of
    ordinary contrast instead of saturated ones."""

    def measure(module, args):
        x = args[0]
        module.running_means.copy_(x.mean(dim=(0, 2, 3)).expand_as(module.running_means))
        module.running_vars.copy_(x.var(dim=(0, 2, 3)).expand_as(module.running_vars))

    norms = [m for m in model.modules() if type(m).__name__ == "BigGANBatchNorm"]
    handles = [m.register_forward_pre_hook(measure) for m in norms]
    try:
        config = model.config
        classes = torch.randint(0, config.num_classes, (samples,))
        one_hot = torch.nn.functional.one_hot(classes, config.num_classes).float()
        model(truncated_normal((samples, config.z_dim)) * truncation, one_hot, truncation)
    finally:
        for handle in handles:
            handle.remove()


def _cached_file(url: str, folders: list[Path]) -> Path | None:
    """The package's cache stores ``sha256(url)[.sha256(etag)]`` with a ``.json`` naming the url."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for meta in sorted(folder.glob("*.json")):
            try:
                if json.loads(meta.read_text(encoding="utf-8")).get("url") == url:
                    data = meta.with_suffix("")
                    if data.is_file():
                        return data
            except (OSError, ValueError):
                continue
    return None


def _cache_folders(cache_dir: str | os.PathLike | None) -> list[Path]:
    folders = [Path(cache_dir).expanduser()] if cache_dir else []
    default = os.environ.get("PYTORCH_PRETRAINED_BIGGAN_CACHE", str(Path.home() / ".pytorch_pretrained_biggan"))
    return folders + [Path(default).expanduser()]


def biggan_files(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(config.json, pytorch_model.bin)`` of a BigGAN folder or of a name in the package's cache (nothing is
    downloaded); a :class:`GANFilesNotFoundError` that says how to provide them otherwise."""
    text = os.fspath(name_or_path)
    if text in BIGGAN_MODELS:
        folders = _cache_folders(cache_dir)
        config = _cached_file(_BIGGAN_URL.format(name=text, file="config.json"), folders)
        weights = _cached_file(_BIGGAN_URL.format(name=text, file="pytorch_model.bin"), folders)
        if config is None or weights is None:
            raise GANFilesNotFoundError(
                f"`gan` {text!r}: its weights are not in the cache ({', '.join(map(str, folders))}) and are never "
                f"downloaded at run time. " + gan_how_to_provide(text)
            )
        return config, weights
    folder = Path(text).expanduser()
    config, weights = folder / _CONFIG, folder / _WEIGHTS
    if not folder.is_dir() or not config.is_file() or not weights.is_file():
        raise GANFilesNotFoundError(
            f"`gan` {text!r} is not one of {', '.join(BIGGAN_MODELS)}, 'tiny', 'tiny:RES', or a folder with {_CONFIG} "
            f"and {_WEIGHTS}. " + gan_how_to_provide()
        )
    return config, weights


def is_random_biggan(name: str) -> bool:
    """Whether ``name`` asks for a small random BigGAN (``"tiny"`` or ``"tiny:RES"``)."""
    return name == TINY or name.startswith(TINY + ":")


def load_biggan(
    name_or_path: str | os.PathLike = "biggan-deep-128",
    *,
    truncation: float = 0.7,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> BigGANGenerator:
    """A BigGAN-deep generator with real weights from a local folder or the package's cache, or a small random one.

    Args:
        name_or_path: a folder with ``config.json`` and ``pytorch_model.bin``; one of
            :data:`BIGGAN_MODELS` (looked up in ``cache_dir`` and the package's cache, without
            downloading); or ``"tiny"`` / ``"tiny:RES"`` (a small random BigGAN at RES pixels,
            default 128: tests and timing only).
        truncation: see :class:`BigGANGenerator`.
        device: where it runs (default CPU).

    Raises:
        GANFilesNotFoundError: the folder or the cached files are missing; the message says how to
            provide them offline.
        ImportError: ``pytorch-pretrained-biggan`` is not installed.
    """
    text = os.fspath(name_or_path)
    if is_random_biggan(text):
        resolution = text.split(":", 1)[1] if ":" in text else "128"
        if not resolution.isdigit():
            raise ValueError(f"`gan` {text!r}: expected 'tiny' or 'tiny:RES' with RES in pixels, e.g. 'tiny:32'.")
        return random_biggan(int(resolution), truncation=truncation).to(device or "cpu")
    package = _biggan_package()
    config, weights = biggan_files(text, cache_dir)
    name = text if text in BIGGAN_MODELS else str(Path(text).expanduser())
    model = package.BigGAN(package.BigGANConfig.from_json_file(str(config)))
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(missing) == len(model.state_dict()):
        raise ValueError(
            f"`gan` {text!r}: {weights} holds none of the weights of the BigGAN its {_CONFIG} describes "
            f"(unexpected keys {unexpected[:5]})."
        )
    if missing:  # loaded non-strictly, as the package itself does
        warnings.warn(
            f"`gan` {text!r}: {len(missing)} tensors not in {weights} keep their initial values: {missing[:5]}",
            stacklevel=2,
        )
    return BigGANGenerator(model, truncation, name=name).to(device or "cpu")
