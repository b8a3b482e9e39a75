"""Diffusers pipelines of diffinv (importable as ``diffinv.pipelines``).

``diffinv_pipeline.py`` holds :class:`DiffInvPipeline`; the sub-folders ``tiny``, ``sd15`` and
``sd-turbo`` are diffusers-format definitions without weights (model_index.json + component
configs), from which :func:`load_pipeline` builds random-weight pipelines offline.
"""

from .diffinv_pipeline import (
    DEFINITIONS,
    DiffInvPipeline,
    DiffInvPipelineOutput,
    ModelFilesNotFoundError,
    definition_dir,
    load_pipeline,
)

__all__ = [
    "DEFINITIONS",
    "DiffInvPipeline",
    "DiffInvPipelineOutput",
    "ModelFilesNotFoundError",
    "definition_dir",
    "load_pipeline",
]
