"""The components that :class:`~diffinv.pipelines.DiffInvPipeline` adds to Stable Diffusion's: the target network
(a diffusers component: saved and loaded with the others) and the lighter decoder of the loop (TAESD, not saved)."""

from __future__ import annotations

from diffusers import AutoencoderTiny, DiffusionPipeline

from diffinv.targets import TargetNetwork

__all__ = ["ComponentsMixin"]


class ComponentsMixin:
    """:meth:`set_target`, :meth:`with_target`, :meth:`set_loop_vae` and :meth:`to` of
    :class:`~diffinv.pipelines.DiffInvPipeline`. Listed before ``DiffusionPipeline`` among its bases: :meth:`to`
    overrides diffusers'."""

    def set_target(
        self,
        target: TargetNetwork | str,
        layer: str | None = None,
        weights: str | None = "default",
        follows_features: bool | None = None,
    ) -> DiffusionPipeline:
        """Sets the network whose features are inverted (the ``target`` component).

        Args:
            target: a TargetNetwork, or a name for ``TargetNetwork.from_name``.
            layer: the default feature layer; defaults to the target's single layer.
            weights: for a name: ``"default"``, ``"random:SEED"``, ``None`` (unseeded random) or a
                state-dict file.
            follows_features: whether the target takes the features' input size at each call (see
                :class:`~diffinv.pipelines.DiffInvPipeline`); default: yes for a name, no for a TargetNetwork.
        """
        if isinstance(target, str):
            target = TargetNetwork.from_name(target, layer, weights=weights)
            follows_features = True if follows_features is None else follows_features
        elif not isinstance(target, TargetNetwork):
            raise TypeError(f"`target` must be a TargetNetwork or a name, got {type(target).__name__}.")
        if layer is not None and layer not in target.layer_names():
            raise ValueError(f"`layer` {layer!r} is not a module of target {target.name!r}.")
        self.register_modules(target=target.to(self.device))
        self.layer = layer or (target.layers[0] if len(target.layers) == 1 else None)
        self.register_to_config(layer=self.layer, target_follows_features=bool(follows_features))
        return self

    def with_target(
        self, target: TargetNetwork | str, layer: str | None = None, weights: str | None = "default"
    ) -> DiffusionPipeline:
        """A new pipeline sharing this one's components (no copies) with another target, kept for a caller that
        wants a pipeline object of its own; a caller that shares one pipeline between targets (an ``lru_cache``,
        threads) passes the target to the call instead (``pipe(features, target=..., layer=...)``), which makes
        nothing and changes nothing, unlike :meth:`set_target`.

        Example:
            >>> out = shared.with_target(target, layer="blocks.2")(features)
            >>> out = shared(features, target=target, layer="blocks.2")    # the same, without a new pipeline
        """
        components = {k: v for k, v in self.components.items() if k != "target"}
        pipe = type(self)(**components, target=target, layer=layer, target_weights=weights)
        pipe.register_to_config(_name_or_path=self.name_or_path)
        pipe.loop_vae = self.loop_vae
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def to(self, *args, **kwargs) -> DiffusionPipeline:
        """Moves/casts the diffusion components (the loop's decoder follows the VAE); the target only moves (it
        keeps its dtype: diffusers' ``to`` does not see it)."""
        target = self.__dict__.get("target")
        self.__dict__["target"] = None
        try:
            super().to(*args, **kwargs)
        finally:
            self.__dict__["target"] = target
        if target is not None:
            target.to(self.device)
        if self.loop_vae is not None:
            self.loop_vae.to(self.vae.device, self.vae.dtype)
        return self

    def set_loop_vae(self, vae: AutoencoderTiny | None) -> DiffusionPipeline:
        """Decodes with ``vae`` inside the optimization loop (a lighter decoder: diffusers' ``AutoencoderTiny``,
        TAESD, :func:`~diffinv.pipelines.load_taesd`); the returned images are still decoded by the full VAE.
        ``None``: the full VAE throughout. Not saved by :meth:`save_pretrained`; kept by :meth:`with_target`.

        Raises:
            ValueError: ``vae`` does not take this pipeline's latents (channels) or upsamples by another factor.

        Example:
            >>> pipe.set_loop_vae(load_taesd("path/to/taesd"))
        """
        if vae is not None:
            config = vae.config
            scale = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
            if config.latent_channels != self.vae.config.latent_channels or scale != self.vae_scale_factor:
                raise ValueError(
                    f"`vae` decodes {config.latent_channels}-channel latents {scale}x up, but this pipeline's VAE "
                    f"decodes {self.vae.config.latent_channels}-channel latents {self.vae_scale_factor}x up: use a "
                    f"TAESD made for this model (or 'random')."
                )
            vae = vae.to(self.vae.device, self.vae.dtype).eval().requires_grad_(False)
        self.loop_vae = vae
        return self
