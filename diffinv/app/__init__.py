"""``diffinv app``: the browser explorer (Gradio): Invert, Depth, Channels, Runs.

:mod:`diffinv.app.runner` holds the work (no Gradio): the :class:`Workbench`, made of the run execution
(:mod:`~diffinv.app.execution`) and one module per tab, over the visitor state (:mod:`~diffinv.app.visitor`) and
the server's bounds (:mod:`~diffinv.app.limits`). :mod:`diffinv.app.ui` holds the page, one module per tab.
Install with ``pip install diffinv[app]``; start with ``diffinv app``.
"""

from .limits import Limits
from .runner import Workbench
from .visitor import InvertRequest, Session, Update, error_message

__all__ = ["InvertRequest", "Limits", "Session", "Update", "Workbench", "error_message"]
