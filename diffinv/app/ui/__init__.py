"""The page of ``diffinv app`` (Gradio Blocks): settings on the left, the Invert, Depth, Channels and Runs tabs
on the right (one module each). Every button calls :class:`~diffinv.app.runner.Workbench`; errors are shown in
the status line with the command line's text, never as a traceback.

Runs take turns: the work events share one queue slot (``concurrency_id="work"``), so a second session waits
with Gradio's queue position shown; a second run in the same session is refused with a busy message. A closed
page or a cancelled job closes the handler's generator, which cancels its run at the next iteration. Numbers
arrive as the visitor sent them (no Gradio ``minimum``/``maximum``) and are checked by the Workbench; an upload
is accepted only when Gradio's upload route wrote it (:func:`~diffinv.app.ui.widgets.upload_field`).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no usage reports

from .page import build_app  # noqa: E402
from .widgets import upload_field  # noqa: E402

__all__ = ["build_app", "upload_field"]
