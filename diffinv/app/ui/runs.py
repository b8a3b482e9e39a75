"""The Runs tab of the page: a ``diffinv bench`` / ``diffinv demo`` run folder of the server's runs folder
(``--runs-dir``): its table, grid, plots and records."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from ..runner import Workbench
from .widgets import _png


def runs_tab() -> SimpleNamespace:
    """The tab's components (in the current ``gr.Tab``)."""
    with gr.Row():
        folder = gr.Textbox(
            "",
            label="run folder of `diffinv bench` / `diffinv demo` (--out)",
            info="its name in the server's runs folder (--runs-dir)",
            scale=4,
            elem_id="runs-folder",
        )
        open_run = gr.Button("Open", variant="primary", scale=1, elem_id="runs-open")
    status = gr.Markdown("", elem_id="runs-status")
    table = gr.Markdown("", elem_id="runs-table")
    with gr.Row():
        grid = gr.Image(label="grid", type="pil")
        plots = gr.Gallery(label="plots", columns=1, height=360)
    records = gr.Dataframe(label="records")
    return SimpleNamespace(
        folder=folder, open_run=open_run, status=status, table=table, grid=grid, plots=plots, records=records
    )


def wire_runs(bench: Workbench, tab: SimpleNamespace) -> None:
    """Open (or Enter in the folder field) shows :meth:`Workbench.open_run <diffinv.app.runner.Workbench.open_run>`."""

    def open_folder(path):
        try:
            view = bench.open_run(path)
        except Exception as err:
            return f"**{bench.error_text(err)}**", "", None, [], None
        plots = [(_png(p), p.name) for p in view.plots]
        records = pd.DataFrame(view.records) if view.records else None
        return (f"{str(path).strip()}: {len(view.records)} records", view.table, _png(view.grid), plots, records)

    outputs = [tab.status, tab.table, tab.grid, tab.plots, tab.records]
    tab.open_run.click(open_folder, tab.folder, outputs, api_name="open_run")
    tab.folder.submit(open_folder, tab.folder, list(outputs), api_visibility="private")
