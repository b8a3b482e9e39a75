"""``diffinv app``: the browser explorer (Gradio), offline and on this machine only by default."""

from __future__ import annotations

import os

from . import common


def add_parsers(sub) -> None:
    p = sub.add_parser("app", help="the browser explorer: watch a reconstruction form, layer by layer (Gradio)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=common.positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also make a public gradio.live link (off by default; needs internet)")
    common.add_device_arg(p)
    p.set_defaults(func=run)


def build(device: str = "auto"):
    """The app's Blocks, with the command line's error types (``diffinv app``; tests); its inverters come
    from the registry, as the command line's do."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError("`diffinv app` needs Gradio: pip install 'diffinv[app]'") from None
    from ..app.runner import Workbench
    from ..app.ui import build_app
    from . import USER_ERRORS

    device = str(common.resolve_device(device))
    return build_app(Workbench(user_errors=USER_ERRORS, device=device))


def run(args) -> int:
    demo = build(args.device)
    print(f"diffinv app: starting on http://{args.host}:{args.port} (Ctrl+C stops it)")
    # One run at a time across sessions (the work events share one slot; others wait in the queue).
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   ssr_mode=False, footer_links=[])
    return 0
