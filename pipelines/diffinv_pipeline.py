"""DiffInvPipeline: white-box feature inversion through a Stable Diffusion prior.

Given the features ``f`` of an image at one layer of a target network ``N``, the pipeline optimizes the initial
latent ``z_T`` of a K-step deterministic sampler so that ``N(decode(sample(z_T)))`` matches ``f``::

    z_T (fp32, optimized) -> K DDIM steps (UNet, checkpointed, optional CFG)
        -> VAE decode (checkpointed) -> image in [0, 1] -> N -> feature loss + priors

The class is here (one class per file, diffusers style); its parts are in :mod:`diffinv.diffusion`. The file
also works as a diffusers ``custom_pipeline`` (it imports ``diffinv`` only by absolute imports)::

    pipe = DiffusionPipeline.from_pretrained(sd_dir, custom_pipeline="pipelines/diffinv_pipeline.py",
                                             trust_remote_code=True, target="tf_efficientnet_lite0", layer="blocks.2")
"""

from __future__ import annotations

from collections.abc import Callable

import PIL.Image
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer

from diffinv.compilation import backend, feature_function
from diffinv.diffusion.call_features import CallFeatures, nearest_multiple_of_8, resolve_call_features, target_dtype
from diffinv.diffusion.components import ComponentsMixin
from diffinv.diffusion.conditioning import ConditioningMixin, call_prompts
from diffinv.diffusion.img2img import Img2ImgMixin, img2img_steps
from diffinv.diffusion.latents import STARTS, prepare_latents, start_images
from diffinv.diffusion.loading import LoadingMixin
from diffinv.diffusion.loop import GradientClosure, check_reconstruction, step_end_hook
from diffinv.diffusion.outputs import DiffInvPipelineOutput
from diffinv.diffusion.sampler import SamplerMixin
from diffinv.features import FeatureSet, check_input_size
from diffinv.inverters.diffusion import CALL_DEFAULTS as DEFAULTS
from diffinv.losses import feature_loss, latent_prior, temporal_smoothness
from diffinv.metrics import feature_residual
from diffinv.optimization import EarlyStopping, check_weight, run_optimization
from diffinv.pipelines.loss_scaling import LossScaler
from diffinv.prompts import resolve_prompts
from diffinv.targets import TargetNetwork

__all__ = ["DiffInvPipeline", "DiffInvPipelineOutput", "img2img_steps", "nearest_multiple_of_8"]


class DiffInvPipeline(ComponentsMixin, LoadingMixin, ConditioningMixin, SamplerMixin, Img2ImgMixin, DiffusionPipeline):
    r"""Inverts the features of a target network by optimizing Stable Diffusion latents.

    Args:
        vae: decodes latents to images.
        text_encoder: CLIP text encoder for the prompt embeddings.
        tokenizer: its tokenizer.
        unet: the denoiser.
        scheduler: the model's scheduler. Its configuration (betas, prediction type) defines the
            differentiable sampler, which is always deterministic DDIM (see :meth:`chain_scheduler`).
        target: the network whose features are inverted: a :class:`~diffinv.targets.TargetNetwork`,
            a name for :meth:`TargetNetwork.from_name` (``"resnet50"``, ``"tf_efficientnet_lite0"``,
            any timm name), or ``None`` (then a FeatureSet's own target is built at call time).
        layer: the default feature layer (a FeatureSet carries its own).
        target_weights: weights for a target given by name: ``"default"`` (pretrained, local
            cache), ``"random:SEED"``, ``None`` (random) or a state-dict file.
        target_follows_features: whether the target takes the input size the features were made at (below);
            default: yes for a target given by name, no for a TargetNetwork. Saved with the pipeline.

    A target the pipeline builds itself (given by name) takes, at each call, the input size the
    features were made at: a FeatureSet's recorded resize (``preprocessing["input_size"]``, else its
    ``input_size``), or for a tensor the call's ``input_size`` (else ``height``/``width``). A
    :class:`~diffinv.targets.TargetNetwork` passed in keeps its own ``input_size``.

    The target is a diffusers component (``TargetNetwork`` is a ``ModelMixin``): ``save_pretrained`` writes it to
    ``target/`` (its config, the description that rebuilds it, and its weights) and ``model_index.json`` names it
    ``["diffinv.targets", "TargetNetwork"]``, so ``from_pretrained`` (and diffusers' ``custom_pipeline``) load it
    with the other components.

    The methods besides the call come from the mixins of :mod:`diffinv.diffusion`: the target and the loop's
    decoder (:meth:`set_target`, :meth:`with_target`, :meth:`set_loop_vae`), loading (:meth:`from_pretrained`,
    :meth:`from_definition`), the prompts (:meth:`encode_prompt`), the sampler (:meth:`chain_scheduler`,
    :meth:`render`) and img2img (:meth:`img2img`, :meth:`encode_image`). The optimization loop is the one rule of
    every diffinv inverter, :func:`diffinv.optimization.run_optimization`.

    Example:
        >>> pipe = DiffInvPipeline.from_pretrained("path/to/stable-diffusion-v1-5", target="resnet50", layer="layer3")
        >>> out = pipe(feature_set, num_inference_steps=10, iterations=100)
        >>> out.images[0].save("reconstruction.png"); out.feature_residual
        >>> pipe = load_pipeline("tiny", target=target)        # random weights, offline, for tests
        >>> refined = pipe.img2img(latents, strength=0.3, num_inference_steps=20)   # img2img on clean latents
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["target"]
    _callback_tensor_inputs = ["latents", "loss", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        target: TargetNetwork | str | None = None,
        layer: str | None = None,
        target_weights: str | None = "default",
        target_follows_features: bool | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        for module in (vae, text_encoder, unet):
            module.eval().requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.loop_vae: AutoencoderTiny | None = None  # a lighter decoder for the loop (set_loop_vae)
        self.layer: str | None = None
        self.register_modules(target=None)
        if target is not None:
            self.set_target(target, layer=layer, weights=target_weights, follows_features=target_follows_features)
        else:
            self.register_to_config(layer=layer, target_follows_features=False)

    # ------------------------------------------------------------------ the call's steps
    def check_inputs(
        self,
        features: torch.Tensor | FeatureSet,
        guidance_scale: float,
        num_inference_steps: int,
        iterations: int,
        learning_rate: float,
        input_size: tuple[int, int] | None,
        latent_prior_weight: float,
        temporal_weight: float,
        optimize: str,
        latents: torch.Tensor | None,
        init: str,
        mapper,
        image,
        strength: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        max_retries: int,
        num_images_per_prompt: int,
        early_stop: EarlyStopping | None = None,
        target: TargetNetwork | None = None,
    ) -> None:
        """Raises a ValueError naming the argument, its value and what was expected, for any argument
        of :meth:`__call__` that can be checked before the features are (:meth:`resolve_call_features`)."""
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if optimize not in ("initial", "all"):
            raise ValueError(f"`optimize` must be 'initial' or 'all', got {optimize!r}.")
        if init != "noise" and init not in STARTS:
            *others, last = ("noise", *STARTS)
            raise ValueError(f"`init` must be {', '.join(map(repr, others))} or {last!r}, got {init!r}.")
        for name, value in (("num_inference_steps", num_inference_steps), ("iterations", iterations)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an integer >= 0, got {max_retries!r}.")
        if early_stop is not None and not isinstance(early_stop, EarlyStopping):
            raise ValueError(
                f"`early_stop` must be None or an EarlyStopping(patience, min_delta), got {early_stop!r}."
            )
        if num_images_per_prompt != 1:
            raise ValueError(
                f"`num_images_per_prompt` must be 1, got {num_images_per_prompt!r}: DiffInvPipeline makes one "
                f"reconstruction per feature map (the feature maps are the batch). For several samples of a map, "
                f"repeat it in the batch, or call again with another `generator`."
            )
        given = {"mapper": mapper, "image": image}  # the start arguments, by the `init` that takes them
        for name, start in STARTS.items():
            if init == name and not start.valid(given[name]):
                raise ValueError(f"`init={name!r}` needs `{name}=` {start.needs}, got {type(given[name]).__name__}.")
            if init == name and latents is not None:
                raise ValueError(f"pass either `latents` or `init={name!r}`, not both.")
            if init != name and start.exclusive and given[name] is not None:
                raise ValueError(f"`{name}` is the start of `init={name!r}`, but `init` is {init!r}.")
        img2img_steps(num_inference_steps, strength)  # checks `strength` (used by every start of STARTS)
        check_weight("temporal_weight", temporal_weight)
        check_weight("latent_prior_weight", latent_prior_weight)
        check_weight("guidance_scale", guidance_scale)
        check_weight("learning_rate", learning_rate)
        if input_size is not None:
            input_size = check_input_size(input_size)
            if isinstance(features, FeatureSet):
                raise ValueError(
                    f"`input_size` is for a feature tensor; the FeatureSet records the input size its features were "
                    f"made at ({features.preprocessing.get('input_size') or list(features.input_size)}), got "
                    f"{input_size!r}."
                )
        bad_keys = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad_keys:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {bad_keys}, expected keys in {self._callback_tensor_inputs}."
            )
        if self.target is None and target is None and not isinstance(features, FeatureSet):
            raise ValueError(
                "the pipeline has no target network: pass `target=` to `from_pretrained`/`load_pipeline`, "
                "call `pipe.set_target(...)`, or pass a FeatureSet (which names its target)."
            )

    def resolve_call_features(
        self,
        features: torch.Tensor | FeatureSet,
        height: int | None,
        width: int | None,
        input_size: tuple[int, int] | None,
        layer: str | None,
        target: TargetNetwork | None = None,
    ) -> CallFeatures:
        """Resolves the features of one call once: the target, the size it resizes to, the output size, the layer
        (:func:`~diffinv.diffusion.call_features.resolve_call_features`)."""
        return resolve_call_features(self, features, height, width, input_size, layer, target)

    def prepare_latents(
        self,
        shape: tuple[int, int, int, int],
        scheduler: DDIMScheduler,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        init: str = "noise",
        start=None,
        features: torch.Tensor | FeatureSet | None = None,
    ) -> torch.Tensor:
        """The initial latents ``z_T`` ``(N, C, h, w)``, fp32 on ``device``: ``latents`` as given, a hybrid start
        noised as img2img does, or Gaussian noise (:func:`~diffinv.diffusion.latents.prepare_latents`)."""
        return prepare_latents(self, shape, scheduler, device, generator, latents, init, start, features)

    @torch.enable_grad()
    def _gradient_step(
        self,
        variables: list[torch.Tensor],
        *,
        features: torch.Tensor,
        target: TargetNetwork,
        layer: str,
        input_size: tuple[int, int] | None,
        prompt_embeds: torch.Tensor,
        scheduler: DDIMScheduler,
        guidance_scale: float,
        loss: str,
        latent_prior_weight: float,
        temporal_weight: float,
        gradient_checkpointing: bool,
        compile: bool | str,
        loss_scale: float,
        redone: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Per-image loss at ``variables`` and the gradients of the loss times ``loss_scale`` (``None`` when
        the loss is not finite); :meth:`LossScaler.unscale` divides them back. The images are decoded by the
        loop's decoder (:meth:`set_loop_vae`); ``redone`` marks those decoded again in fp32."""
        variables = [v.detach().requires_grad_() for v in variables]
        _, images = self._sample(
            variables[0],
            prompt_embeds,
            scheduler,
            guidance_scale,
            variables[1:],
            gradient_checkpointing,
            compile=compile,
            vae=self.loop_vae,
            redone=redone,
        )
        feature = feature_function(target, layer, compile)
        predicted = feature(images.to(target_dtype(target)), input_size=input_size)
        per_image = feature_loss(predicted, features, loss)
        if latent_prior_weight:
            per_image = per_image + latent_prior_weight * latent_prior(variables[0])
        total = per_image.sum()
        if temporal_weight:
            total = total + temporal_weight * temporal_smoothness(variables[0])
        if not torch.isfinite(total):
            return per_image.detach(), None
        return per_image.detach(), list(torch.autograd.grad(total * loss_scale, variables))

    @torch.no_grad()
    def __call__(
        self,
        features: torch.Tensor | FeatureSet,
        prompt: str | list[str] | None = DEFAULTS["prompt"],
        negative_prompt: str | list[str] | None = DEFAULTS["negative_prompt"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        iterations: int = DEFAULTS["iterations"],
        learning_rate: float = DEFAULTS["learning_rate"],
        height: int | None = None,
        width: int | None = None,
        input_size: tuple[int, int] | None = None,
        layer: str | None = None,
        loss: str = DEFAULTS["loss"],
        latent_prior_weight: float = DEFAULTS["latent_prior_weight"],
        temporal_weight: float = DEFAULTS["temporal_weight"],
        optimize: str = DEFAULTS["optimize"],
        gradient_checkpointing: bool = DEFAULTS["gradient_checkpointing"],
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        init: str = DEFAULTS["init"],
        mapper=None,
        image: torch.Tensor | PIL.Image.Image | list[PIL.Image.Image] | None = None,
        strength: float = DEFAULTS["strength"],
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (as diffusers' pipelines)
        max_retries: int = DEFAULTS["max_retries"],
        compile: bool | str = DEFAULTS["compile"],
        num_images_per_prompt: int = 1,
        early_stop: EarlyStopping | None = None,
        target: TargetNetwork | None = None,
        progress_bar_config: dict | None = None,
    ) -> DiffInvPipelineOutput | tuple:
        r"""Reconstructs images from features.

        Args:
            features: ``(N, ...)`` features of the target at ``layer``, or a
                :class:`~diffinv.features.FeatureSet` (which carries its layer and input size). Several
                feature maps are inverted at once, as a batch.
            prompt: ``None`` (default): the target's predicted class as ``"a photo of a {class}"``
                when it can classify the features (see :meth:`TargetNetwork.classify_features
                <diffinv.targets.TargetNetwork.classify_features>`), else no text;
                ``"auto"``: the same, and an error when impossible; a string, one string per image,
                or a prompt-file reference (``"@backgrounds:3"``, see :mod:`diffinv.prompts`);
                ``""``: no text.
            negative_prompt: used with classifier-free guidance (``guidance_scale > 1``).
            guidance_scale: classifier-free guidance weight; ``<= 1`` runs the UNet once per step on
                the prompt alone (use 0 or 1 for turbo models).
            num_inference_steps: K, the steps of the deterministic sampler (1 for turbo models).
            iterations: optimization iterations, under the one rule of
                :func:`diffinv.optimization.run_optimization` (Adam, cosine-annealed learning rate,
                each image's best iterate returned, non-finite steps skipped).
            learning_rate: Adam step size on the fp32 latents.
            height, width: image size, multiples of 8. Defaults: the FeatureSet's input size
                (rounded to a multiple of 8 when the target resizes its input anyway), else the
                UNet's native size (``unet.config.sample_size * vae_scale_factor``).
            input_size: for a tensor, the ``(H, W)`` the target network saw when it made the
                features (after its own resize). A target the pipeline built by name takes it
                (default: ``(height, width)`` when either is given, else its own input size); a
                FeatureSet carries it. A TargetNetwork passed in keeps its own input size.
            layer: the feature layer for a tensor (default: the pipeline's layer).
            loss: ``"nmse"`` (default), ``"mse"`` or ``"cosine"``.
            latent_prior_weight: weight of ``latent_prior(z_T)`` (keeps z_T Gaussian-like).
            temporal_weight: smoothing between consecutive latents of the batch (video frames).
            optimize: ``"initial"`` (z_T only) or ``"all"`` (z_T plus an offset to each intermediate
                latent of the chain).
            gradient_checkpointing: recompute each UNet call and the decode in the backward pass
                (memory nearly flat in K); off is faster and uses memory linear in K.
            generator: seeds the initial latents (one generator, or one per image).
            latents: ``(N, 4, H/8, W/8)`` initial latents instead of random ones.
            init: ``"noise"`` (default): start from Gaussian latents z_T; ``"mapper"``: the hybrid
                start — a trained :class:`~diffinv.models.FeatureMapper` predicts the clean latent
                from the features, it is noised as :meth:`img2img` does at ``strength`` and the
                optimization runs through the same chain (:meth:`img2img_chain`: the last
                ``img2img_steps(K, strength)`` sampler steps).
                ``"image"``: the hybrid start from any image estimate (a black-box decoder's, a GAN's,
                a file): ``image`` is encoded by the VAE and used as that clean latent.
            mapper: the FeatureMapper for ``init="mapper"``.
            image: for ``init="image"``: ``(N, 3, H, W)`` (or ``(1, 3, H, W)``, used for every feature
                map) in [0, 1], or PIL images; resized to the output size when it differs.
            strength: with ``init="mapper"`` or ``"image"``, how far into the chain the start is noised,
                in (0, 1] (see :func:`img2img_steps`).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`DiffInvPipelineOutput` (else a tuple of its fields).
            callback_on_step_end: ``fn(pipe, iteration, timestep, callback_kwargs) -> dict`` after
                each optimization iteration; returning ``{"latents": ...}`` replaces the latents;
                returning ``{"interrupt": True}`` stops early (this call only: the pipeline keeps no call state).
            callback_on_step_end_tensor_inputs: keys of ``callback_kwargs``, from
                ``_callback_tensor_inputs``.
            max_retries: with fp16 networks, how often an iteration whose gradient overflowed is
                retried with a halved loss scale before it is skipped (:class:`LossScaler`).
            compile: run the UNet, the VAE decoder and the target through ``torch.compile`` (``True``:
                inductor; a mode, ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or ``"max-autotune"``;
                or a backend name) (:mod:`diffinv.compilation`; compiled once per network and kept; a network
                whose compilation fails runs eagerly, with a warning): the same results within tolerance,
                slower first iterations, faster later ones.
            num_images_per_prompt: accepted for diffusers clients, and only as 1: the pipeline makes
                one reconstruction per feature map (the feature maps are the batch). For several
                samples of one map, repeat it in the batch or call again with another ``generator``.
            early_stop: stop each image whose loss has stopped improving
                (:class:`~diffinv.optimization.EarlyStopping`): its latents stay at its best iterate while
                the others run on; the loop ends when every image has stopped. ``None``: every image runs
                ``iterations``.
            target: this call's target network instead of the pipeline's (it keeps its own input size): what a
                caller sharing one pipeline between targets (threads, a cache) passes; the pipeline is not changed.
            progress_bar_config: this call's progress bar settings over the pipeline's
                (``set_progress_bar_config``), e.g. ``{"disable": True}``; the pipeline is not changed.

        Call defaults are those of :class:`~diffinv.inverters.diffusion.DiffusionConfig` (``CALL_DEFAULTS``), the one
        place they are written.

        Returns:
            :class:`DiffInvPipelineOutput`: images, per-image loss history, feature residual,
            prompts, skipped steps, the optimized latents and the fp32 redos of the decode.
        """
        # 1. Check inputs
        self.check_inputs(
            features, guidance_scale, num_inference_steps, iterations, learning_rate,
            input_size, latent_prior_weight, temporal_weight, optimize, latents, init, mapper, image, strength,
            output_type, callback_on_step_end_tensor_inputs, max_retries, num_images_per_prompt, early_stop, target,
        )  # fmt: skip
        if image is not None:
            image = start_images(image, len(features))

        # 2. Resolve the features once: the target, the input size it resizes to, the output size, the layer
        call = self.resolve_call_features(features, height, width, input_size, layer, target)
        feats, target, layer, (height, width) = call.features, call.target, call.layer, call.image_size

        # 3. Define call parameters
        batch_size = len(feats)
        device = self._execution_device
        compile = compile if backend(compile) else False
        do_cfg = guidance_scale > 1.0

        # 4. Prompts: resolve (automatic class prompt, prompt files) and encode
        prompts = call_prompts(prompt, call)
        negative = resolve_prompts(negative_prompt, batch_size, "negative_prompt") if negative_prompt else None
        prompt_embeds = self.encode_prompt(prompts, device, do_cfg, negative)

        # 5. Prepare the differentiable sampler: the whole chain, or its img2img tail for the hybrid start
        if init in STARTS:
            scheduler = self.img2img_chain(num_inference_steps, strength, device)
        else:
            scheduler = self.chain_scheduler(num_inference_steps, device)

        # 6. Prepare the optimized variables (fp32 master copies): z_T (+ one offset per intermediate latent)
        factor = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        start = {"mapper": mapper, "image": image}.get(init)
        variables = [self.prepare_latents(shape, scheduler, device, generator, latents, init, start, features)]
        if optimize == "all":  # each (N, C, h, w): one block per image, as the one optimization rule needs
            variables += [torch.zeros_like(variables[0]) for _ in range(len(scheduler.timesteps) - 1)]

        # 7. Optimize: the closure (loss and gradient; fp16: retried at a halved loss scale), the step hook
        #    (callback_on_step_end, interrupt) and the one rule of diffinv.optimization (cosine schedule, best
        #    iterate per image, non-finite steps skipped and counted); it leaves each image's best variables
        objective = dict(
            features=feats, target=target, layer=layer, input_size=call.input_size, prompt_embeds=prompt_embeds,
            scheduler=scheduler, guidance_scale=guidance_scale, loss=loss, latent_prior_weight=latent_prior_weight,
            temporal_weight=temporal_weight, gradient_checkpointing=gradient_checkpointing, compile=compile,
        )  # fmt: skip
        scaler = LossScaler(enabled=self.unet.dtype == torch.float16)
        closure = GradientClosure(self._gradient_step, objective, batch_size, max_retries, scaler)
        on_step_end = step_end_hook(
            self, variables, prompt_embeds, scheduler, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        with self._call_progress_bar(iterations, progress_bar_config) as progress_bar:
            optimized = run_optimization(
                variables, closure, iterations=iterations, lr=learning_rate, num_images=batch_size,
                progress=progress_bar, callback=on_step_end, early_stop=early_stop,
            )  # fmt: skip

        # 8. Render the best latents seen, and how well their features match
        final_latents, images = self._sample(
            variables[0], prompt_embeds, scheduler, guidance_scale, variables[1:], gradient_checkpointing=False,
            compile=compile,
        )  # fmt: skip
        check_reconstruction(images, self.unet.dtype, optimized)
        residual = feature_residual(target, images.to(target_dtype(target)), feats, layer, input_size=call.input_size)

        # 9. Post-process
        if output_type == "latent":
            output = final_latents
        else:
            output = self.image_processor.postprocess(
                images, output_type=output_type, do_denormalize=[False] * batch_size
            )
        self.maybe_free_model_hooks()
        result = DiffInvPipelineOutput(
            images=output,
            loss_history=optimized.history,
            feature_residual=residual.cpu(),
            prompts=prompts,
            skipped_steps=optimized.skipped_steps,
            latents=variables[0].detach().cpu(),
            fp32_decodes=closure.fp32_decodes,
        )
        return result if return_dict else result.to_tuple()
