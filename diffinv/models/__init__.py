"""Learned networks, as diffusers ``ModelMixin``/``ConfigMixin`` where they are trained and saved.

* :class:`~diffinv.models.upconv.UpconvNet`: features -> pixels (black-box baseline);
* :class:`~diffinv.models.mapper.FeatureMapper`: features -> diffusion latent (black-box, hybrid start);
* :class:`~diffinv.models.dip.SkipGenerator`: the Deep Image Prior generator;
* :mod:`~diffinv.models.vae`: encode/decode helpers of a Stable Diffusion VAE.
"""

from .dip import SkipGenerator
from .learned import PerLayerModels, check_model_input, resolve_model_dir
from .mapper import FeatureMapper
from .upconv import UpconvNet
from .vae import decode_latents, encode_latents, vae_scale_factor

__all__ = [
    "FeatureMapper",
    "PerLayerModels",
    "SkipGenerator",
    "UpconvNet",
    "check_model_input",
    "decode_latents",
    "encode_latents",
    "resolve_model_dir",
    "vae_scale_factor",
]
