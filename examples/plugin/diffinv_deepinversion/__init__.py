"""DeepInversion's BatchNorm-statistics image prior on diffinv's Fourier pixel optimization: a diffinv plugin.

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion" (CVPR 2020) synthesize
images from a trained classifier with the prior

    R_feature(x) = sum over BatchNorm layers l of ||mu_l(x) - running_mean_l||_2 + ||sigma^2_l(x) - running_var_l||_2

where ``mu_l(x)`` and ``sigma^2_l(x)`` are the per-channel mean and variance of what enters BatchNorm layer
``l``: the image's statistics are pulled towards those the network saw in training. Here that prior is added
to diffinv's feature inversion (the ``pixel`` method: Fourier + colour-decorrelated parameterization, the
best iterate per image), with three choices of its own:

* **Which BatchNorm layers**: those that run before the inverted layer's output, i.e. up to and including the
  layer's own block (found in the traced forward: the BatchNorm calls the layer's output depends on). Later
  layers are not computed at all (the forward is cut after the layer, as the feature loss's is).
* **Per-image statistics**: DeepInversion's are batch statistics; the images of a diffinv batch are
  independent inversions, so each image's mean and variance are taken over its own spatial positions, and
  each image's prior is its own (an ``(N,)`` term, as :func:`diffinv.inverters.optimize` wants).
* **Its weight per stride** (:data:`BN_WEIGHTS`, ``--bn-weight`` overrides it): tuned by
  ``examples/plugin/tune_weight.py`` on training-split ImageNet images (never the atlas's held-out ones).

One forward per step: the inversion's features and the BatchNorm inputs come from one truncated forward of
the target's own modules (a ``torch.fx`` graph made for this plugin, with the BatchNorm layers as leaves),
without hooks and without state shared between calls: what one step's forward saw lives in an object made
for that inversion only.

Example:
    >>> from diffinv.inverters import build_inverter
    >>> out = build_inverter("deepinversion", target, iterations=300)(feature_set)   # bn_weight: per stride
    >>> out.info["bn_weight"], out.info["bn_layers"]
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from diffinv import truncation
from diffinv.compilation import backend, compiled
from diffinv.inverters import PixelConfig, PixelInverter
from diffinv.inverters.base import feature_stride, optimize
from diffinv.inverters.config import option
from diffinv.inverters.pixel import PARAMETERIZATIONS, fourier_decay_power
from diffinv.losses import total_variation

__all__ = [
    "BN_WEIGHTS",
    "DeepInversionConfig",
    "DeepInversionInverter",
    "StatisticsForward",
    "bn_statistics_loss",
    "bn_weight_for_stride",
]

__version__ = "0.1.0"

# The prior's weight by feature stride (input pixels per feature pixel), with the feature loss ``nmse``: the
# non-zero weight of the grid with the best mean PSNR, EfficientNet-Lite0 at 128 px, 300 iterations with the
# atlas's early stop, the first 4 images of the atlas's 400-image *training* split of imagenet-sample-500
# (examples/plugin/tune_weight.py; the table is in the README). PSNR and its paired difference to weight 0 (pixel):
# stride 4 (blocks.1) 0: 23.66, 1e-6: -0.02 +- 0.03, 1e-5: -0.23 +- 0.25, 1e-4: -5.24; stride 8 (blocks.2) 0: 18.99,
# 1e-5: -0.02 +- 0.22, 1e-4: -3.24; stride 16 (blocks.4) 0: 14.88, 1e-5: +0.07 +- 0.13, 1e-4: -1.48; stride 32
# (blocks.6) 0: 13.53, 1e-6: -0.05 +- 0.33, 3e-6: +0.06 +- 0.05, 1e-5: -0.24 +- 0.18, 1e-4: -1.20, 1e-3: -1.93.
# Stronger weights cost PSNR at every stride: the per-image statistics pull each image towards the training set's
# average statistics, which no single image has.
BN_WEIGHTS = {4: 1e-6, 8: 1e-5, 16: 1e-5, 32: 3e-6}


def bn_weight_for_stride(stride: float) -> float:
    """The tuned weight of :data:`BN_WEIGHTS` for ``stride`` (the nearest tuned stride in log2; the ends beyond)."""
    tuned = sorted(BN_WEIGHTS)
    nearest = min(tuned, key=lambda s: abs(math.log2(s) - math.log2(max(stride, 1e-6))))
    return BN_WEIGHTS[nearest]


def bn_statistics_loss(inputs: list[torch.Tensor], norms: list[nn.Module]) -> torch.Tensor:
    """DeepInversion's ``R_feature`` per image: ``(N,)`` sum over the layers of ``||mu - running_mean||_2 +
    ||var - running_var||_2``, the mean and (biased) variance of each ``(N, C, ...)`` input over its positions.

    Args:
        inputs: what enters each BatchNorm layer, one ``(N, C, ...)`` tensor per layer.
        norms: the layers, in the same order (their ``running_mean`` and ``running_var``).
    """
    total = None
    for x, norm in zip(inputs, norms):
        # (N, positions, C): a view of a channels-last input, whose reductions over positions are fast (var_mean
        # over dims (2, 3) of it is 3x slower than the whole convolution forward)
        x = x.float().movedim(1, -1).reshape(len(x), -1, x.shape[1])
        mean = x.mean(1)
        var = (x - mean[:, None]).square().mean(1)
        term = (mean - norm.running_mean.float()).norm(dim=1) + (var - norm.running_var.float()).norm(dim=1)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("`inputs` is empty: there is no BatchNorm layer to take statistics of.")
    return total


def _timm_notrace() -> tuple[tuple[type, ...], tuple]:
    """timm's layers that torch.fx runs as one operation, and its functions it must not trace into."""
    try:
        from timm.layers import _fx
    except ImportError:
        return (), ()
    return tuple(_fx.get_notrace_modules()), tuple(_fx.get_notrace_functions())


class _StatisticsTracer(torch.fx.Tracer):
    """Traces with every BatchNorm layer as one operation (so its input is a node), recording each module's
    first output node. Only the tracing thread is traced (torch.fx patches ``nn.Module.__call__`` for all)."""

    def __init__(self):
        self._leaves, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self.outputs: dict[str, torch.fx.Node] = {}
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.modules.batchnorm._BatchNorm, *self._leaves)) or super().is_leaf_module(
            m, module_qualified_name
        )

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, torch.fx.Proxy):
            self.outputs.setdefault(self.path_of_module(m), out.node)
        return out

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


class StatisticsForward:
    """The target network's forward cut after ``layer``, returning ``(features, [input of each BatchNorm layer])``.

    The BatchNorm layers are those whose output the layer's output depends on (the layers up to and including
    the layer's block). The graph holds the network's own modules (no copy, no hook) and keeps no state: calls
    from several threads share it.

    Attributes:
        names: the BatchNorm layers' module names, in forward order.
        norms: the layers themselves (their running statistics).

    Raises:
        ValueError: torch.fx cannot trace the network, ``layer`` does not run in its forward, or no BatchNorm
            layer runs before it (DeepInversion's prior needs one).
    """

    def __init__(self, model: nn.Module, layer: str):
        tracer = _StatisticsTracer()
        # torch.fx patches nn.Module while it traces: take turns with diffinv's own traces (one per network)
        try:
            with truncation.TRACE_TURNS:
                traced = tracer.trace(model)
        except Exception as err:  # noqa: BLE001 - any tracing failure is the same limit of the method
            raise ValueError(
                f"method 'deepinversion' needs a network torch.fx can trace, to take the statistics of "
                f"its BatchNorm inputs; tracing failed: {type(err).__name__}: {str(err)[:200]}"
            ) from None
        if layer not in tracer.outputs:
            raise ValueError(
                f"`layer` {layer!r} does not run in the traced forward (or outputs no single tensor); "
                f"method 'deepinversion' takes the features of a module the forward calls."
            )
        graph, env = torch.fx.Graph(), {}
        graph.graph_copy(traced, env)
        end = env[tracer.outputs[layer]]
        before = _ancestors(end)
        modules = dict(model.named_modules())
        calls = [
            n
            for n in graph.nodes
            if n.op == "call_module"
            and n in before
            and isinstance(modules.get(n.target), nn.modules.batchnorm._BatchNorm)
        ]
        if not calls:
            raise ValueError(
                f"no BatchNorm layer runs before `layer` {layer!r}: method 'deepinversion' needs the "
                f"running statistics of at least one (a network with BatchNorm, a deeper layer)."
            )
        graph.output((end, [n.args[0] for n in calls]))
        module = torch.fx.GraphModule(model, graph, class_name="StatisticsForward")
        module.graph.eliminate_dead_code()
        module.delete_all_unused_submodules()
        module.recompile()
        self.module = module
        self.names = [n.target for n in calls]
        self.norms = [modules[name] for name in self.names]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.module(x)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    """``node`` and every node it depends on."""
    seen, todo = {node}, [node]
    while todo:
        for parent in todo.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _jitter(images: torch.Tensor, pixels: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random translation by up to ``pixels`` (as ``pixel``'s jitter)."""
    if pixels <= 0:
        return images
    dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


class _OneInversion:
    """What :func:`~diffinv.inverters.optimize` reads as its target in one inversion: ``feature(images)`` runs the
    statistics forward once and keeps the BatchNorm inputs of those images for :meth:`prior` (the same step's
    call on the same images). Made for one inversion and dropped after it: nothing is shared between calls."""

    def __init__(self, target, forward: StatisticsForward, run, weight: float):
        self.target, self.forward, self.run, self.weight = target, forward, run, weight
        self._last: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def feature(self, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        features, inputs = self.run(self.target.preprocess(images))
        self._last = (images, inputs)
        return features

    def prior(self, images: torch.Tensor) -> torch.Tensor:
        last, self._last = self._last, None
        if last is not None and last[0] is images:
            inputs = last[1]
        else:  # not the images of the step's feature loss: one forward of their own
            inputs = self.run(self.target.preprocess(images))[1]
        return self.weight * bn_statistics_loss(inputs, self.forward.norms)


@dataclass(frozen=True)
class DeepInversionConfig(PixelConfig):
    """The pixel inverter's options (:class:`~diffinv.inverters.PixelConfig`: Fourier by default) and the weight of
    DeepInversion's BatchNorm-statistics prior.

    Attributes:
        bn_weight: weight of the prior (``None``: :func:`bn_weight_for_stride` of the layer's stride; 0: plain
            ``pixel``).
    """

    method = "deepinversion"
    bn_weight: float | None = option(
        None,
        "optional_non_negative",
        help=(
            "weight of DeepInversion's BatchNorm-statistics prior (default: tuned per feature stride, "
            "diffinv_deepinversion.BN_WEIGHTS; 0: none)"
        ),
    )


class DeepInversionInverter(PixelInverter):
    """Pixel optimization (:class:`~diffinv.inverters.PixelInverter`) with DeepInversion's BatchNorm-statistics
    prior (Yin et al., CVPR 2020) on the BatchNorm layers up to the inverted layer, per image.

    A refiner like ``pixel`` (``dip+deepinversion``: DIP's images refined under the prior), optimizing through
    a feature transform (the adaptive attacker of ``diffinv audit``), temporal (``temporal_weight``: video).

    Args:
        target: the network whose features are inverted (it needs BatchNorm layers before the layer).
        config: a :class:`DeepInversionConfig`.
        start: a hybrid start, as for ``pixel``.
        **options: fields of :class:`DeepInversionConfig` (``bn_weight``, ``iterations``, ...).
    """

    name = "deepinversion"
    config_class = DeepInversionConfig

    def __init__(self, target, config=None, **options):
        super().__init__(target, config, **options)
        self._forwards: dict = {}  # (layer, device) -> StatisticsForward: stateless graphs, built then assigned

    @classmethod
    def memory_cost(cls, options, shape):
        """The pixel optimizer's state, and the centred copies of the BatchNorm inputs that the variances keep for
        the backward pass: as many values as the inputs themselves, 133 float32 per input pixel for
        EfficientNet-Lite0 up to blocks.6 (measured at 128 px), counted as 136."""
        return {**super().memory_cost(options, shape), "bn statistics": int(136 * 4 * shape.pixels * shape.half)}

    def statistics_forward(self, layer: str) -> StatisticsForward:
        """The :class:`StatisticsForward` of ``layer`` on the target (made once per layer and device, kept)."""
        key = (layer, str(self.device))
        found = self._forwards.get(key)
        if found is None:
            found = StatisticsForward(self.target.model, layer)
            self._forwards[key] = found
        return found

    def _prepare(self, features, layer, size):
        super()._prepare(features, layer, size)
        self.statistics_forward(layer)  # fails here, before the optimization, for a network it cannot serve

    def _reconstruct(
        self,
        features,
        layer,
        size,
        *,
        generator,
        progress,
        init=None,
        anchor=None,
        callback=None,
        feature_transform=None,
        early_stop=None,
    ):
        """As :meth:`PixelInverter._reconstruct`, with the prior added to the per-image loss."""
        c = self.config
        stride = feature_stride(features, size)
        weight = bn_weight_for_stride(stride) if c.bn_weight is None else c.bn_weight
        forward = self.statistics_forward(layer)
        run = forward if backend(c.compile) is None else compiled(forward.module, compile=c.compile)
        inversion = _OneInversion(self.target, forward, run, weight)
        extra = {}
        if c.parameterization == "fourier":
            extra["decay_power"] = fourier_decay_power(stride) if c.decay_power is None else c.decay_power
        start_info = {}
        if self.hybrid and init is None:  # a video's warm start (init) replaces the start after the first frame
            init, start_info = self._start_estimate(features, layer, size, generator=generator, progress=progress)
            init = init.to(self.device).expand(len(features), -1, -1, -1)
        params, render = PARAMETERIZATIONS[c.parameterization](
            len(features), size, generator=generator, device=self.device, init=init, **extra
        )

        def prior(images: torch.Tensor) -> torch.Tensor:
            out = inversion.prior(images) if weight else torch.zeros(len(images), device=images.device)
            return out + c.tv_weight * total_variation(images, c.tv, c.tv_beta) if c.tv_weight else out

        images, history, info = optimize(
            params,
            lambda: _jitter(render(), c.jitter, generator),
            inversion,
            features,
            layer,
            iterations=c.iterations,
            lr=c.learning_rate,
            lr_schedule=c.lr_schedule,
            loss=c.loss,
            prior_fn=prior,
            temporal_weight=c.temporal_weight,
            temporal_fn=render,
            temporal_anchor=anchor,
            final_fn=render,
            desc=f"deepinversion {layer}",
            progress=progress,
            compile=False,
            callback=callback,
            feature_transform=feature_transform,
            early_stop=early_stop,
        )
        return images, history, {**info, **start_info, "bn_weight": weight, "bn_layers": len(forward.names)}
