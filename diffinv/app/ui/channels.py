"""The Channels tab of the page: the layer's channels that fire most on the image (mean activation), where they
fire, and each one's per-channel inversion and feature visualization."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from ..runner import Workbench
from ..visitor import BusyError
from .widgets import _files


def channels_tab(bench: Workbench) -> SimpleNamespace:
    """The tab's components (in the current ``gr.Tab``)."""
    gr.Markdown("The channels of the layer that fire most on the image (mean activation), and where they fire.")
    with gr.Row():
        top = gr.Number(8, label="top channels", info=f"1 to {bench.limits.max_top}")
        run = gr.Button("Show", variant="primary", elem_id="channels-run")
    status = gr.Markdown("", elem_id="channels-status")
    table = gr.Dataframe(label="ranking", elem_id="channels-table")
    maps = gr.Gallery(label="activation maps", columns=4, height=260)
    visuals = gr.Gallery(label="per-channel inversions, then feature visualizations", columns=4, height=260)
    return SimpleNamespace(top=top, run=run, status=status, table=table, maps=maps, visuals=visuals)


def wire_channels(bench: Workbench, tab: SimpleNamespace, fields: list, to_request, shown) -> None:
    """Show calls :meth:`Workbench.channels <diffinv.app.runner.Workbench.channels>` (in the work's queue slot)."""

    def channels(photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed, top):
        values, k = (
            (photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed),
            top,
        )
        try:
            view = bench.channels(to_request(*values), top=k)
        except BusyError as err:
            return f"**{err}**", None, [], []
        except Exception as err:
            return f"**{bench.error_text(err)}**", None, [], []
        table = pd.DataFrame(view.ranking, columns=["channel", "mean activation"])
        return view.note, table, _files(view.maps, shown), _files(view.visualizations, shown)

    tab.run.click(
        channels,
        [*fields, tab.top],
        [tab.status, tab.table, tab.maps, tab.visuals],
        api_name="channels",
        concurrency_limit=1,
        concurrency_id="work",
    )
