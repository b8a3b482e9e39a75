"""Learned networks, as diffusers ``ModelMixin``/``ConfigMixin`` where they are trained and saved.

* :class:`~diffinv.models.upconv.UpconvNet`: features -> pixels (black-box baseline);
* :class:`~diffinv.models.mapper.FeatureMapper`: features -> diffusion latent (black-box, hybrid start);
* :class:`~diffinv.models.dip.SkipGenerator`: the Deep Image Prior generator;
* :mod:`~diffinv.models.vae`: encode/decode helpers of a Stable Diffusion VAE.

Importing the package is cheap: the diffusers-based models (and diffusers) are imported when
first asked for.
"""

import importlib

_HOME = {
    "FeatureMapper": "mapper",
    "PerLayerModels": "learned",
    "SkipGenerator": "dip",
    "UpconvNet": "upconv",
    "check_dip_size": "dip",
    "check_model_input": "learned",
    "decode_latents": "vae",
    "encode_latents": "vae",
    "resolve_model_dir": "learned",
    "vae_scale_factor": "vae",
}

__all__ = [
    "FeatureMapper",
    "PerLayerModels",
    "SkipGenerator",
    "UpconvNet",
    "check_dip_size",
    "check_model_input",
    "decode_latents",
    "encode_latents",
    "resolve_model_dir",
    "vae_scale_factor",
]


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
