"""The settings column of the page: image, target, weights, layer, method (with the folders it takes) and the
numbers, shared by the tabs; a target's layer list is refreshed when the target changes."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ...inverters import INVERTERS
from ..limits import MIN_SIZE
from ..runner import Workbench
from ..visitor import PHOTOS
from .widgets import upload_field

# The folder fields of the page; each is shown for the methods that take the option of its name.
FOLDER_FIELDS = ("model", "decoder", "mapper")


def settings_column(bench: Workbench, first: str, layers: list[str], default_layer: str) -> SimpleNamespace:
    """The settings' fields (in the current column); ``fields``: the inputs of every tab's run, in order."""
    limits = bench.limits
    # custom values reach the handler, which names the field (Gradio's own error would echo them)
    photo = gr.Dropdown(list(PHOTOS), value=PHOTOS[0], label="bundled photo (--images)", allow_custom_value=True)
    upload = upload_field(label="or upload an image", height=160)
    target = gr.Textbox(first, label="target network (--target)", info=f"this server's: {', '.join(bench.targets)}")
    weights = gr.Textbox(
        "default",
        label="weights (--weights): default, random:SEED or a file",
        info="a file: its name in the server's models folder (--models-dir)",
    )
    layer = gr.Dropdown(layers, value=default_layer, label="layer (--layer)", allow_custom_value=True)
    method = gr.Dropdown(list(INVERTERS), value="pixel", label="method (--method)", allow_custom_value=True)
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
        iterations = gr.Number(100, label="iterations (--iterations)", info=f"1 to {limits.max_iterations}")
        size = gr.Number(128, label="size (--size)", info=f"{MIN_SIZE} to {limits.max_size} pixels")
        seed = gr.Number(0, label="seed (--seed)", info="0 to 2**32 - 1")
    fields = [photo, upload, target, weights, layer, method, model, decoder, mapper, iterations, size, seed]
    return SimpleNamespace(
        target=target, weights=weights, layer=layer, method=method, folders=[model, decoder, mapper], fields=fields
    )


def wire_settings(bench: Workbench, settings: SimpleNamespace, status) -> None:
    """A method shows the folder fields it takes; a changed target refreshes the layer list (``status``: where
    the outcome is said)."""

    def show_folders(name):
        cls = INVERTERS.get(name)
        taken = cls.option_names() if cls is not None else ()
        value = "tiny" if cls is not None and "model" in cls.required else None  # random weights, to try it
        return tuple(
            gr.update(visible=field in taken, **({"value": value} if field == "model" else {}))
            for field in FOLDER_FIELDS
        )

    settings.method.change(show_folders, settings.method, settings.folders, queue=False, api_visibility="private")

    def refresh_layers(name, weights_value):
        try:
            names, default = bench.layer_choices((name or "").strip(), (weights_value or "").strip() or "default")
        except Exception as err:
            return gr.update(), f"**{bench.error_text(err)}**"
        return gr.update(choices=names, value=default), f"target {name}: {len(names)} layers"

    target, weights, layer = settings.target, settings.weights, settings.layer
    target.submit(refresh_layers, [target, weights], [layer, status], api_name="layers")
    target.blur(refresh_layers, [target, weights], [layer, status], api_visibility="private")
