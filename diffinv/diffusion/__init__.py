"""The parts of :class:`~diffinv.pipelines.DiffInvPipeline` (``pipelines/diffinv_pipeline.py`` holds the class).

* ``call_features.py``: the features of one call, resolved once (target, input size, output size, layer);
* ``conditioning.py``: the prompts of a call, their CLIP embeddings and classifier-free guidance;
* ``sampler.py``: the differentiable K-step DDIM chain, run through backprop (activation checkpointing);
* ``decoding.py``: the decode of the latents, with the fp32 redo of a non-finite fp16 decode;
* ``img2img.py``: img2img on clean latents and its strength (:func:`img2img_steps`);
* ``latents.py``: the initial latents, and the hybrid starts that noise a clean latent into the chain;
* ``loop.py``: the closure and the step hook of the optimization loop;
* ``components.py``, ``loading.py``: the target and the loop's decoder as components; loading and definitions;
* ``outputs.py``: :class:`DiffInvPipelineOutput`.

The pipeline's methods come from the mixins of these modules; the modules import from diffinv's core, models and
``diffinv.pipelines``' definitions, never the pipeline file.
"""
