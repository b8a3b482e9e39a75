"""The pieces the tabs of the page share: the visitor's fields as a request, a run's updates as the handler's
yields, Cancel, and images as files (written once, so that a streamed gallery is not rewritten in place).

An upload reaches the handler as the path the request names, unopened (:func:`upload_field`): Gradio checks only
file objects that carry its ``meta`` marker, so a bare ``{"path": "/any/file.png"}`` would otherwise be read from
the server's disk. The handler accepts a path only when Gradio's upload route wrote it
(:func:`~diffinv.app.limits.check_upload`), and the Workbench reads it with :func:`diffinv.io.load_image` (the
pixel limit, ``DIFFINV_MAX_IMAGE_PIXELS``, applies); an error is the page's message, never Gradio's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gradio as gr
from PIL import Image

from ..limits import Upload, check_upload
from ..runner import Workbench
from ..visitor import InvertRequest

__all__ = ["upload_field"]


def _status(update) -> str:
    return f"**{update.message}**" if update.error else update.message


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


def request_maker(demo: gr.Blocks):
    """``to_request(*fields)``: the settings' values as an :class:`~diffinv.app.visitor.InvertRequest`."""

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

    return to_request


def run_updates(updates, show):
    """The handler's yields for a Workbench run; closing it (a closed page) closes the run's updates,
    which cancels the run."""
    try:
        for update in updates:
            yield gr.skip() if update.heartbeat else show(update)
    finally:
        updates.close()


def cancel_handler(bench: Workbench):
    """The Cancel buttons' handler (one function for both tabs: their events share its queue group)."""

    def cancel_run(request: gr.Request):
        session = bench.session(request.session_hash if request else None)
        if not session.busy:
            return "Nothing to cancel: no run in progress."
        session.cancel.set()
        return "Cancelling: the run stops at its next iteration."

    return cancel_run
