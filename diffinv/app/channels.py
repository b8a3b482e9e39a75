"""The Channels tab's work: the layer's channels ranked by mean activation on the image, their heat maps,
per-channel inversions and feature visualizations (:mod:`diffinv.interpret`).

A part of :class:`~diffinv.app.runner.Workbench`; its page is :mod:`diffinv.app.ui.channels`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..interpret.channels import channel_activations, heat_maps, invert_channels, overlay, top_channels
from ..interpret.objectives import channel
from ..interpret.visualize import visualize
from .execution import _uint8
from .limits import bounded_int
from .visitor import RUN_BUSY, BusyError, InvertRequest, _chosen_layer

__all__ = ["ChannelView", "ChannelsTab"]


@dataclass
class ChannelView:
    """The Channels tab: the layer's channels ranked by mean activation on the image.

    Attributes:
        ranking: ``[(channel, mean activation)]``, strongest first.
        maps: ``[(activation map (H, W, 3) uint8, caption)]`` of those channels, upsampled to the image.
        visualizations: ``[(image, caption)]``: each channel's per-channel inversion, then its feature
            visualization (or what a custom :attr:`~diffinv.app.runner.Workbench.channel_visualizer` returns).
    """

    ranking: list[tuple[int, float]]
    maps: list
    visualizations: list
    note: str


class ChannelsTab:
    """:meth:`channels` of :class:`~diffinv.app.runner.Workbench`."""

    def channels(self, request: InvertRequest, top: int = 8) -> ChannelView:
        """The ``top`` channels of ``request.layer`` ranked by mean activation on the image (the interpretability
        module, :mod:`diffinv.interpret`): where each fires (its heat map over the image), the image
        reconstructed from that channel alone with ``request.method`` (per-channel inversion), and the
        channel's feature visualization (pixel, Fourier parameterization), each with ``request.iterations``
        (default 128, or fewer to stay within the bound). A custom :attr:`channel_visualizer` replaces the last
        two. The work is not cancellable, so it is bounded: ``top`` x iterations at most ``--max-iterations``."""
        top = bounded_int(top, "--top", 1, self.limits.max_top, "this server's bound")
        request = self.checked(request)
        budget = self.limits.max_iterations  # one image per channel: the tab runs top x iterations image-iterations
        if request.iterations is None:
            request = dataclasses.replace(request, iterations=max(1, min(128, budget // top)))
        elif request.iterations * top > budget:
            raise ValueError(
                f"`--iterations` {request.iterations} x `--top` {top}: the Channels tab optimizes one "
                f"image per channel, and {request.iterations * top} image-iterations are above this "
                f"server's --max-iterations {budget}; lower either."
            )
        _chosen_layer(request)
        make_inverter = self._check(request, images=top)
        if not self._run_lock.acquire(timeout=self.wait_seconds):
            raise BusyError(RUN_BUSY)
        try:
            return self._channels(request, top, make_inverter)
        finally:
            self._run_lock.release()

    def _channels(self, request: InvertRequest, top: int, make_inverter) -> ChannelView:
        original, _ = self.load_image(request.image, request.size)
        target = self._target(request.target, request.weights, request.size, (request.layer,))
        activations = channel_activations(target, request.layer, original)[0]
        order = top_channels(activations[None], min(top, len(activations)))
        with torch.no_grad():
            feats = target.feature(original.to(target.mean.device), request.layer).float().cpu()
        overlays = overlay(original[0], heat_maps(feats, order, tuple(original.shape[-2:])))
        maps = [(_uint8(overlays[i]), f"channel {c}: mean {float(activations[c]):.3g}") for i, c in enumerate(order)]
        ranking = [(c, float(activations[c])) for c in order]
        if self.channel_visualizer is not None:
            visuals = list(self.channel_visualizer(target, request.layer, order, original, request.size))
            return ChannelView(ranking, maps, visuals, "Channels shown by the connected visualizer.")
        generator = torch.Generator().manual_seed(int(request.seed))
        alone = invert_channels(
            make_inverter(target), original, request.layer, order, generator=generator, progress=False
        )
        iterations = request.iterations
        shown = visualize(
            target,
            channel(request.layer, order),
            len(order),
            size=(request.size, request.size),
            iterations=iterations,
            generator=torch.Generator().manual_seed(int(request.seed)),
            progress=False,
        )
        visuals = [(_uint8(alone.images[i]), f"channel {c} alone ({request.method})") for i, c in enumerate(order)]
        visuals += [
            (_uint8(shown.images[i]), f"channel {c} visualized: {float(shown.values[i]):.3g}")
            for i, c in enumerate(order)
        ]
        note = (
            f"Per-channel inversion ({request.method}, only that channel kept) and feature visualization "
            f"(pixel, Fourier, {iterations} iterations) of the top {len(order)} channels."
        )
        return ChannelView(ranking, maps, visuals, note)
