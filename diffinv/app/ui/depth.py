"""The Depth tab of the page: the image inverted at each of the target's default layers (shallow to deep), side
by side, with a table per layer and the PSNR-vs-depth plot."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from ..runner import Workbench
from .widgets import _files, _png, _status, run_updates


def depth_tab() -> SimpleNamespace:
    """The tab's components (in the current ``gr.Tab``)."""
    gr.Markdown(
        "The image inverted at each of the target's default layers (shallow to deep) "
        "with the method and settings on the left."
    )
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="depth-run")
        cancel = gr.Button("Cancel", elem_id="depth-cancel")
    status = gr.Markdown("", elem_id="depth-status")
    gallery = gr.Gallery(label="original, then shallow → deep", columns=5, height=240, elem_id="depth-gallery")
    with gr.Row():
        plot = gr.Image(label="PSNR vs depth", type="pil", elem_id="depth-plot")
        table = gr.Dataframe(label="per layer", elem_id="depth-table")
    return SimpleNamespace(run=run, cancel=cancel, status=status, gallery=gallery, plot=plot, table=table)


def wire_depth(bench: Workbench, tab: SimpleNamespace, fields: list, to_request, cancel_run, shown) -> None:
    """Run streams :meth:`Workbench.depth <diffinv.app.runner.Workbench.depth>`; Cancel calls ``cancel_run``."""
    tab.cancel.click(cancel_run, None, tab.status, queue=False, api_visibility="private")

    def depth(
        photo,
        upload,
        target,
        weights,
        layer,
        method,
        model,
        decoder,
        mapper,
        iterations,
        size,
        seed,
        request: gr.Request,
    ):
        values = (photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed)
        session = bench.session(request.session_hash if request else None)
        try:
            req = to_request(*values)
        except Exception as err:
            yield f"**{bench.error_text(err)}**", [], None, None
            return

        def show(update):
            table = pd.DataFrame(
                [
                    {k: r.get(k) for k in ("layer", "psnr", "ssim", "feature_residual", "top1_agreement")}
                    for r in update.records
                ]
            ).round(3)
            return _status(update), _files(update.images, shown), _png(update.plot), table

        yield from run_updates(bench.depth(req, session), show)

    tab.run.click(
        depth,
        fields,
        [tab.status, tab.gallery, tab.plot, tab.table],
        api_name="depth",
        concurrency_limit=1,
        concurrency_id="work",
    )
