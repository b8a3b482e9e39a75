"""The Invert tab of the page: one image inverted at one layer, watched as it forms (the reconstruction every few
iterations, the loss curve, then the metrics); Cancel stops it at the next iteration."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from ..runner import Workbench
from .widgets import _files, _status, run_updates

METRIC_NAMES = (
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("feature_residual", "feature residual", "{:.3f}"),
    ("top1_agreement", "top-1 agreement", "{:.0f}"),
    ("seconds", "seconds", "{:.1f}"),
)


def _metrics_table(metrics: dict) -> str:
    if not metrics:
        return ""
    rows = ["| metric | value |", "|---|---|"]
    for key, label, fmt in METRIC_NAMES:
        value = metrics.get(key)
        rows.append(f"| {label} | {'n/a' if value is None else fmt.format(value)} |")
    if "class_original" in metrics:
        rows.append(
            f"| top-1 class: original / reconstruction | {metrics['class_original']} / "
            f"{metrics['class_reconstruction']} |"
        )
    return "\n".join(rows)


def _loss_frame(losses) -> pd.DataFrame:
    """``[(iteration, loss)]`` as a typed frame (numbers even when empty, so the plot's axes are quantitative)."""
    its, values = zip(*losses) if losses else ((), ())
    return pd.DataFrame({"iteration": pd.Series(its, dtype="int64"), "loss": pd.Series(values, dtype="float64")})


def invert_tab() -> SimpleNamespace:
    """The tab's components (in the current ``gr.Tab``)."""
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="invert-run")
        cancel = gr.Button("Cancel", elem_id="invert-cancel")
    status = gr.Markdown("Pick an image, a layer and a method, then Run.", elem_id="invert-status")
    with gr.Row():
        gallery = gr.Gallery(label="original and reconstruction", columns=2, height=320, elem_id="invert-gallery")
        losses = gr.LinePlot(_loss_frame([]), x="iteration", y="loss", title="loss", elem_id="invert-loss", height=300)
    metrics = gr.Markdown("", elem_id="invert-metrics")
    return SimpleNamespace(run=run, cancel=cancel, status=status, gallery=gallery, losses=losses, metrics=metrics)


def wire_invert(bench: Workbench, tab: SimpleNamespace, fields: list, to_request, cancel_run, shown) -> None:
    """Run streams :meth:`Workbench.invert <diffinv.app.runner.Workbench.invert>`; Cancel calls ``cancel_run``."""

    def invert(
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
            yield f"**{bench.error_text(err)}**", [], _loss_frame([]), ""
            return
        yield from run_updates(
            bench.invert(req, session),
            lambda update: (
                _status(update),
                _files(update.images, shown),
                _loss_frame(update.losses),
                _metrics_table(update.metrics),
            ),
        )

    tab.run.click(
        invert,
        fields,
        [tab.status, tab.gallery, tab.losses, tab.metrics],
        api_name="invert",
        concurrency_limit=1,
        concurrency_id="work",
    )
    tab.cancel.click(cancel_run, None, tab.status, queue=False, api_name="cancel")
