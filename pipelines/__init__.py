"""Diffusers pipelines of diffinv (importable as ``diffinv.pipelines``).

* ``diffinv_pipeline.py``: :class:`DiffInvPipeline` (one class per file, diffusers style; it
  also works as a diffusers ``custom_pipeline``) and :func:`img2img_steps`, the one definition of
  img2img strength (the pipeline's img2img, its hybrid start and the mapper's refinement);
* ``definitions.py``: the weight-free definitions ``tiny``, ``sd15`` and ``sd-turbo`` (the
  sub-folders: model_index.json + component configs) and checks of model folders;
* ``loaders.py``: :func:`load_pipeline` and :func:`load_vae`.
"""

from .definitions import DEFINITIONS, ModelFilesNotFoundError, definition_dir
from .diffinv_pipeline import DiffInvPipeline, DiffInvPipelineOutput, img2img_steps
from .loaders import load_pipeline, load_vae

__all__ = [
    "DEFINITIONS",
    "DiffInvPipeline",
    "DiffInvPipelineOutput",
    "ModelFilesNotFoundError",
    "definition_dir",
    "img2img_steps",
    "load_pipeline",
    "load_vae",
]
