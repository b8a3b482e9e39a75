"""Diffusers pipelines of diffinv (importable as ``diffinv.pipelines``).

* ``diffinv_pipeline.py``: :class:`DiffInvPipeline` (one class per file, diffusers style; it also works
  as a diffusers ``custom_pipeline``), :func:`img2img_steps` and :func:`nearest_multiple_of_8`;
* ``definitions.py``: the weight-free definitions ``tiny``, ``sd15`` and ``sd-turbo`` and checks of
  model folders;
* ``loss_scaling.py``: :class:`LossScaler`, the fp16 loss scale of the pipeline's gradient step;
* ``loaders.py``: :func:`load_pipeline`, :func:`load_vae` and :func:`load_taesd`.

Importing the package is cheap: the pipeline's own modules are imported when a name that needs them is
first asked for.
"""

import importlib

_HOME = {
    "DEFINITIONS": "definitions",
    "ModelFilesNotFoundError": "definitions",
    "definition_dir": "definitions",
    "DiffInvPipeline": "diffinv_pipeline",
    "DiffInvPipelineOutput": "diffinv_pipeline",
    "img2img_steps": "diffinv_pipeline",
    "nearest_multiple_of_8": "diffinv_pipeline",
    "LossScaler": "loss_scaling",
    "load_pipeline": "loaders",
    "load_taesd": "loaders",
    "load_vae": "loaders",
}

__all__ = [
    "DEFINITIONS",
    "DiffInvPipeline",
    "DiffInvPipelineOutput",
    "LossScaler",
    "ModelFilesNotFoundError",
    "definition_dir",
    "img2img_steps",
    "load_pipeline",
    "load_taesd",
    "load_vae",
    "nearest_multiple_of_8",
]


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
