"""``diffinv app``: the browser explorer (Gradio): Invert, Depth, Channels, Runs.

:mod:`diffinv.app.runner` holds the work (no Gradio), :mod:`diffinv.app.ui` the page. Install with
``pip install diffinv[app]``; start with ``diffinv app``.
"""

from .limits import Limits
from .runner import InvertRequest, Session, Update, Workbench, error_message

__all__ = ["InvertRequest", "Limits", "Session", "Update", "Workbench", "error_message"]
