"""Interpretability: what each layer and each channel encodes.

* :mod:`.objectives` — composable objectives (channel, neuron, layer), lucent-style arithmetic;
* :mod:`.param`, :mod:`.transforms` — image parameterizations (pixel, Fourier/colour-decorrelated,
  DIP, diffusion) and robustness transforms;
* :mod:`.visualize` — feature visualization (activation maximization) under the one optimization rule;
* :mod:`.channels` — channel statistics over images, top channels, per-channel inversion with any
  inverter and heat maps;
* :mod:`.dead_filters` — streaming per-channel statistics: dead, rarely active and constant filters.
"""

from .channels import (
    ChannelInversion,
    channel_activations,
    heat_maps,
    invert_channels,
    keep_channels,
    local_energy,
    overlay,
    pearson,
    top_channels,
)
from .dead_filters import ChannelStatistics, DeadFilterReport, dead_filter_report
from .objectives import Objective, channel, check_channels, check_feature_map, layer_norm, neuron
from .transforms import compose, jitter, pad, random_rotate, random_scale, standard_transforms
from .visualize import VisualizationOutput, check_layer, visualize

__all__ = [
    "ChannelInversion",
    "ChannelStatistics",
    "DeadFilterReport",
    "Objective",
    "VisualizationOutput",
    "channel",
    "channel_activations",
    "check_channels",
    "check_feature_map",
    "check_layer",
    "compose",
    "dead_filter_report",
    "heat_maps",
    "invert_channels",
    "jitter",
    "keep_channels",
    "layer_norm",
    "local_energy",
    "neuron",
    "overlay",
    "pad",
    "pearson",
    "random_rotate",
    "random_scale",
    "standard_transforms",
    "top_channels",
    "visualize",
]
