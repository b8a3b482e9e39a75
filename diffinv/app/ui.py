"""The page of ``diffinv app`` (Gradio Blocks): settings on the left, the Invert, Depth, Channels and
Runs tabs on the right. Every button calls :class:`~diffinv.app.runner.Workbench`; errors are shown
in the status line with the command line's text, never as a traceback.

Runs take turns: the work events share one queue slot (``concurrency_id="work"``), so a second
session waits with Gradio's queue position shown; a second run in the same session is refused
with a busy message. A closed page or a cancelled job closes the handler's generator, which
cancels its run at the next iteration (the Workbench's heartbeat updates, skipped here, let
Gradio notice a closed page while a run works); the next run starts once it has stopped.

Numbers arrive as the visitor sent them (no Gradio ``minimum``/``maximum``, whose errors bypass the
status line) and are checked by the Workbench against the server's bounds.

An upload reaches the handler as the path the request names, unopened (:func:`upload_field`): Gradio checks
only file objects that carry its ``meta`` marker, so a bare ``{"path": "/any/file.png"}`` would otherwise be read
from the server's disk. The handler accepts a path only when Gradio's upload route wrote it
(:func:`~diffinv.app.limits.check_upload`), and the Workbench reads it with :func:`diffinv.io.load_image` (the
pixel limit, ``DIFFINV_MAX_IMAGE_PIXELS``, applies); an error is the page's message, never Gradio's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage reports

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from ..inverters import INVERTERS  # noqa: E402
from .limits import MIN_SIZE, Upload, check_upload  # noqa: E402
from .runner import DEFAULT_TARGET, PHOTOS, BusyError, InvertRequest, Workbench  # noqa: E402

__all__ = ["build_app", "upload_field"]

# The folder fields of the page; each is shown for the methods that take the option of its name.
FOLDER_FIELDS = ("model", "decoder", "mapper")
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


def _status(update) -> str:
    return f"**{update.message}**" if update.error else update.message


def _loss_frame(losses) -> pd.DataFrame:
    """``[(iteration, loss)]`` as a typed frame (numbers even when empty, so the plot's axes are quantitative)."""
    its, values = zip(*losses) if losses else ((), ())
    return pd.DataFrame({"iteration": pd.Series(its, dtype="int64"), "loss": pd.Series(values, dtype="float64")})


def _files(items, folder: Path) -> list[tuple[str, str]]:
    """``[(image array, caption)]`` -> ``[(PNG path, caption)]``, each image written once (atomically) under
    ``folder``. A streamed gallery re-sends the same images many times: as arrays, Gradio would rewrite
    their cached copies in place while the browser reads them; a file is copied into its cache once."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for array, caption in items:
        path = folder / f"{hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()}.png"
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            Image.fromarray(array).save(tmp, format="PNG")
            os.replace(tmp, path)
        out.append((str(path), caption))
    return out


def _uploaded(payload) -> Upload | None:
    """The upload field's value as the handler gets it (in place of ``gr.Image.preprocess``, which opens the
    file): an :class:`~diffinv.app.limits.Upload` of the path the request names and the file's own name, never
    opened here. Whether it is an upload at all is the handler's to check, and a file that is no image gets the
    page's message instead of Gradio's error."""
    if payload is None:
        return None
    return Upload(
        path=payload.path if isinstance(payload.path, str) else None,
        name=payload.orig_name if isinstance(payload.orig_name, str) else None,
    )


def upload_field(**kwargs) -> gr.Image:
    """Gradio's image upload, whose value reaches the handler through :func:`_uploaded` (an instance attribute:
    a subclass of a Gradio component would make Gradio write a ``.pyi`` file beside this module)."""
    field = gr.Image(type="filepath", sources=["upload"], **kwargs)
    field.preprocess = _uploaded
    return field


def _png(path) -> Image.Image | None:
    if not path:
        return None
    with Image.open(path) as img:
        return img.convert("RGB")


def build_app(bench: Workbench, *, title: str = "diffinv explorer") -> gr.Blocks:
    """The Blocks of the app; ``bench`` does the work."""
    if not bench.targets:
        raise ValueError("`--targets`: this server allows no target network; name at least one (--targets NAME).")
    first = DEFAULT_TARGET if DEFAULT_TARGET in bench.targets else bench.targets[0]
    layers, default_layer = bench.layer_choices(first)
    shown = bench.work_dir / "images"
    limits = bench.limits

    def to_request(photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed):
        # numbers as sent: the Workbench checks them against the server's bounds (a message, never an overflow);
        # an upload only when Gradio's upload route wrote it (never a server path the request names)
        if upload is not None:
            upload = Upload(str(check_upload(upload, demo.GRADIO_CACHE, demo.upload_file_set)), upload.name)
        return InvertRequest(
            image=upload if upload is not None else photo,
            target=(target or "").strip(),
            weights=(weights or "").strip() or "default",
            layer=layer,
            method=method,
            iterations=None if iterations in (None, "") else iterations,
            size=size,
            seed=0 if seed in (None, "") else seed,
            model=model,
            decoder=decoder,
            mapper=mapper,
        )

    def run_updates(updates, show):
        """The handler's yields for a Workbench run; closing it (a closed page) closes the run's updates,
        which cancels the run."""
        try:
            for update in updates:
                yield gr.skip() if update.heartbeat else show(update)
        finally:
            updates.close()

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {title}\nReconstruct an image from a network's features and watch it form: "
            "**Invert** one layer, compare **Depth**s, see which **Channels** fire, browse **Runs** of "
            "`diffinv bench`."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                # custom values reach the handler, which names the field (Gradio's own error would echo them)
                photo = gr.Dropdown(
                    list(PHOTOS), value=PHOTOS[0], label="bundled photo (--images)", allow_custom_value=True
                )
                upload = upload_field(label="or upload an image", height=160)
                target = gr.Textbox(
                    first, label="target network (--target)", info=f"this server's: {', '.join(bench.targets)}"
                )
                weights = gr.Textbox(
                    "default",
                    label="weights (--weights): default, random:SEED or a file",
                    info="a file: its name in the server's models folder (--models-dir)",
                )
                layer = gr.Dropdown(layers, value=default_layer, label="layer (--layer)", allow_custom_value=True)
                method = gr.Dropdown(
                    list(INVERTERS), value="pixel", label="method (--method)", allow_custom_value=True
                )
                model = gr.Dropdown(
                    ["tiny"],
                    value=None,
                    label="Stable Diffusion folder (--model); tiny = random weights, to try the path",
                    allow_custom_value=True,
                    visible=False,
                )
                decoder = gr.Textbox("", label="decoder folder (--decoder)", visible=False)
                mapper = gr.Textbox("", label="mapper folder (--mapper)", visible=False)
                with gr.Row():
                    iterations = gr.Number(
                        100, label="iterations (--iterations)", info=f"1 to {limits.max_iterations}"
                    )
                    size = gr.Number(128, label="size (--size)", info=f"{MIN_SIZE} to {limits.max_size} pixels")
                    seed = gr.Number(0, label="seed (--seed)", info="0 to 2**32 - 1")
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Invert", id="invert"):
                    with gr.Row():
                        run = gr.Button("Run", variant="primary", elem_id="invert-run")
                        cancel = gr.Button("Cancel", elem_id="invert-cancel")
                    status = gr.Markdown("Pick an image, a layer and a method, then Run.", elem_id="invert-status")
                    with gr.Row():
                        gallery = gr.Gallery(
                            label="original and reconstruction", columns=2, height=320, elem_id="invert-gallery"
                        )
                        losses = gr.LinePlot(
                            _loss_frame([]),
                            x="iteration",
                            y="loss",
                            title="loss",
                            elem_id="invert-loss",
                            height=300,
                        )
                    metrics = gr.Markdown("", elem_id="invert-metrics")
                with gr.Tab("Depth", id="depth"):
                    gr.Markdown(
                        "The image inverted at each of the target's default layers (shallow to deep) "
                        "with the method and settings on the left."
                    )
                    with gr.Row():
                        depth_run = gr.Button("Run", variant="primary", elem_id="depth-run")
                        depth_cancel = gr.Button("Cancel", elem_id="depth-cancel")
                    depth_status = gr.Markdown("", elem_id="depth-status")
                    depth_gallery = gr.Gallery(
                        label="original, then shallow → deep", columns=5, height=240, elem_id="depth-gallery"
                    )
                    with gr.Row():
                        depth_plot = gr.Image(label="PSNR vs depth", type="pil", elem_id="depth-plot")
                        depth_table = gr.Dataframe(label="per layer", elem_id="depth-table")
                with gr.Tab("Channels", id="channels"):
                    gr.Markdown(
                        "The channels of the layer that fire most on the image (mean activation), and where they fire."
                    )
                    with gr.Row():
                        top = gr.Number(8, label="top channels", info=f"1 to {limits.max_top}")
                        channels_run = gr.Button("Show", variant="primary", elem_id="channels-run")
                    channels_status = gr.Markdown("", elem_id="channels-status")
                    channels_table = gr.Dataframe(label="ranking", elem_id="channels-table")
                    channels_maps = gr.Gallery(label="activation maps", columns=4, height=260)
                    channels_visuals = gr.Gallery(
                        label="per-channel inversions, then feature visualizations", columns=4, height=260
                    )
                with gr.Tab("Runs", id="runs"):
                    with gr.Row():
                        folder = gr.Textbox(
                            "",
                            label="run folder of `diffinv bench` / `diffinv demo` (--out)",
                            info="its name in the server's runs folder (--runs-dir)",
                            scale=4,
                            elem_id="runs-folder",
                        )
                        open_run = gr.Button("Open", variant="primary", scale=1, elem_id="runs-open")
                    runs_status = gr.Markdown("", elem_id="runs-status")
                    runs_table = gr.Markdown("", elem_id="runs-table")
                    with gr.Row():
                        runs_grid = gr.Image(label="grid", type="pil")
                        runs_plots = gr.Gallery(label="plots", columns=1, height=360)
                    runs_records = gr.Dataframe(label="records")

        fields = [photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed]

        # ---------------------------------------------------------------- settings
        def show_folders(name):
            cls = INVERTERS.get(name)
            taken = cls.option_names() if cls is not None else ()
            value = "tiny" if cls is not None and "model" in cls.required else None  # random weights, to try it
            return tuple(
                gr.update(visible=field in taken, **({"value": value} if field == "model" else {}))
                for field in FOLDER_FIELDS
            )

        method.change(show_folders, method, [model, decoder, mapper], queue=False, api_visibility="private")

        def refresh_layers(name, weights_value):
            try:
                names, default = bench.layer_choices((name or "").strip(), (weights_value or "").strip() or "default")
            except Exception as err:
                return gr.update(), f"**{bench.error_text(err)}**"
            return gr.update(choices=names, value=default), f"target {name}: {len(names)} layers"

        target.submit(refresh_layers, [target, weights], [layer, status], api_name="layers")
        target.blur(refresh_layers, [target, weights], [layer, status], api_visibility="private")

        # ---------------------------------------------------------------- Invert
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

        run.click(
            invert,
            fields,
            [status, gallery, losses, metrics],
            api_name="invert",
            concurrency_limit=1,
            concurrency_id="work",
        )

        def cancel_run(request: gr.Request):
            session = bench.session(request.session_hash if request else None)
            if not session.busy:
                return "Nothing to cancel: no run in progress."
            session.cancel.set()
            return "Cancelling: the run stops at its next iteration."

        cancel.click(cancel_run, None, status, queue=False, api_name="cancel")
        depth_cancel.click(cancel_run, None, depth_status, queue=False, api_visibility="private")

        # ---------------------------------------------------------------- Depth
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

        depth_run.click(
            depth,
            fields,
            [depth_status, depth_gallery, depth_plot, depth_table],
            api_name="depth",
            concurrency_limit=1,
            concurrency_id="work",
        )

        # ---------------------------------------------------------------- Channels
        def channels(
            photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed, top
        ):
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

        channels_run.click(
            channels,
            [*fields, top],
            [channels_status, channels_table, channels_maps, channels_visuals],
            api_name="channels",
            concurrency_limit=1,
            concurrency_id="work",
        )

        # ---------------------------------------------------------------- Runs
        def open_folder(path):
            try:
                view = bench.open_run(path)
            except Exception as err:
                return f"**{bench.error_text(err)}**", "", None, [], None
            plots = [(_png(p), p.name) for p in view.plots]
            records = pd.DataFrame(view.records) if view.records else None
            return (f"{str(path).strip()}: {len(view.records)} records", view.table, _png(view.grid), plots, records)

        open_run.click(
            open_folder, folder, [runs_status, runs_table, runs_grid, runs_plots, runs_records], api_name="open_run"
        )
        folder.submit(
            open_folder,
            folder,
            [runs_status, runs_table, runs_grid, runs_plots, runs_records],
            api_visibility="private",
        )
    return demo
