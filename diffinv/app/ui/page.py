"""The page: :func:`build_app` lays out the settings column and the tabs, then wires each part to the Workbench."""

from __future__ import annotations

import gradio as gr

from ..runner import Workbench
from ..visitor import DEFAULT_TARGET
from .channels import channels_tab, wire_channels
from .depth import depth_tab, wire_depth
from .invert import invert_tab, wire_invert
from .runs import runs_tab, wire_runs
from .settings import settings_column, wire_settings
from .widgets import cancel_handler, request_maker

__all__ = ["build_app"]


def build_app(bench: Workbench, *, title: str = "diffinv explorer") -> gr.Blocks:
    """The Blocks of the app; ``bench`` does the work."""
    if not bench.targets:
        raise ValueError("`--targets`: this server allows no target network; name at least one (--targets NAME).")
    first = DEFAULT_TARGET if DEFAULT_TARGET in bench.targets else bench.targets[0]
    layers, default_layer = bench.layer_choices(first)
    shown = bench.work_dir / "images"

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\nReconstruct an image from a network's features and watch it form: "
            "**Invert** one layer, compare **Depth**s, see which **Channels** fire, browse **Runs** of "
            "`diffinv bench`."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                settings = settings_column(bench, first, layers, default_layer)
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Invert", id="invert"):
                    invert = invert_tab()
                with gr.Tab("Depth", id="depth"):
                    depth = depth_tab()
                with gr.Tab("Channels", id="channels"):
                    channels = channels_tab(bench)
                with gr.Tab("Runs", id="runs"):
                    runs = runs_tab()

        # the events, in the order of the page's parts
        to_request, cancel_run = request_maker(demo), cancel_handler(bench)
        wire_settings(bench, settings, invert.status)
        wire_invert(bench, invert, settings.fields, to_request, cancel_run, shown)
        wire_depth(bench, depth, settings.fields, to_request, cancel_run, shown)
        wire_channels(bench, channels, settings.fields, to_request, shown)
        wire_runs(bench, runs)
    return demo
