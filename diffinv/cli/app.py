"""``diffinv app``: the browser explorer (Gradio), offline and on this machine only by default.

What one visitor may ask of the server is bounded (``--max-size``, ``--max-iterations``), targets come only from
an allow-list (``--targets``; default: the networks whose weights are installed), and files come only from two
folders: weight files and model / decoder / mapper folders from ``--models-dir``, run folders of the Runs tab from
``--runs-dir`` (both default to the folder the app is started in).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import common

#: The largest upload Gradio accepts (an image; it is resized to ``--size`` at once).
MAX_UPLOAD = "25mb"


def _folder(text: str) -> Path:
    """An argparse ``type``: an existing folder (its real path)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing folder, got {text!r}")
    return Path(os.path.realpath(path))


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 1 to 65535 (refused at once, not when the server fails to bind)."""
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {shown!r}")
    return port


def add_parsers(sub) -> None:
    from ..app.limits import DEFAULT_MAX_ITERATIONS, DEFAULT_MAX_SIZE

    p = sub.add_parser("app", help="the browser explorer: watch a reconstruction form, layer by layer (Gradio)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=_port, default=7860, help="port, 1 to 65535 (default 7860)")
    p.add_argument(
        "--share", action="store_true", help="also make a public gradio.live link (off by default; needs internet)"
    )
    p.add_argument(
        "--max-size",
        type=common.positive_int,
        default=DEFAULT_MAX_SIZE,
        help=f"largest --size a visitor may ask for, in pixels per side (default {DEFAULT_MAX_SIZE})",
    )
    p.add_argument(
        "--max-iterations",
        type=common.positive_int,
        default=DEFAULT_MAX_ITERATIONS,
        help=f"most --iterations a visitor may ask for (default {DEFAULT_MAX_ITERATIONS})",
    )
    p.add_argument(
        "--models-dir",
        type=_folder,
        default=".",
        help="the folder that weight files (--weights NAME) and model, decoder and mapper folders come "
        "from; nothing outside it is read (default: the folder the app is started in)",
    )
    p.add_argument(
        "--runs-dir",
        type=_folder,
        default=".",
        help="the folder whose run folders the Runs tab serves; nothing outside it is read (default: the "
        "folder the app is started in)",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="NAME",
        default=None,
        help="the target networks a visitor may name in --target, any other is refused (default: those "
        "whose weights are installed on this machine); one without installed weights runs with "
        "random:SEED weights or a weight file under --models-dir",
    )
    common.add_device_arg(p)
    p.set_defaults(func=run)


def workbench(device: str = "auto", limits=None):
    """The app's :class:`~diffinv.app.runner.Workbench`, with the command line's error types; its inverters come
    from the registry, as the command line's do."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError("`diffinv app` needs Gradio: pip install 'diffinv[app]'") from None
    from ..app.runner import Workbench
    from . import USER_ERRORS

    device = str(common.resolve_device(device))
    # heartbeats: a closed page is noticed within half a second, and its run cancelled at the next iteration
    return Workbench(user_errors=USER_ERRORS, device=device, limits=limits, heartbeat_seconds=0.5)


def build(device: str = "auto", limits=None):
    """The app's Blocks (``diffinv app``; tests). ``limits``: a :class:`~diffinv.app.limits.Limits`."""
    bench = workbench(device, limits)
    from ..app.ui import build_app

    return build_app(bench)


def allowed_targets(names: list[str] | None) -> tuple[str, ...]:
    """``--targets``: each name a target :meth:`~diffinv.targets.TargetNetwork.from_name` builds (a built-in one or
    a timm model name), duplicates dropped; ``None``: the targets whose weights are installed here."""
    from ..targets import architecture, available_targets, installed_targets

    if names is None:
        found = tuple(installed_targets())
        if not found:
            raise common.UsageError(
                "`--targets`: no target network has its weights installed on this machine; name "
                "the targets visitors may use, e.g. --targets tf_efficientnet_lite0 (with "
                "random:SEED weights or a weight file under --models-dir)."
            )
        return found
    allowed = []
    for name in names:
        try:
            architecture(name)
        except ValueError:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise common.UsageError(
                f"`--targets` {shown!r}: not a target network; expected one of {', '.join(available_targets())}."
            ) from None
        if name not in allowed:
            allowed.append(name)
    return tuple(allowed)


def run(args) -> int:
    from ..app.limits import MIN_SIZE, Limits

    if args.max_size < MIN_SIZE:
        raise common.UsageError(f"`--max-size` expected an integer >= {MIN_SIZE}, got {args.max_size}")
    limits = Limits(
        max_size=args.max_size,
        max_iterations=args.max_iterations,
        models_dir=args.models_dir,
        runs_dir=args.runs_dir,
        targets=allowed_targets(args.targets),
    )
    demo = build(args.device, limits)
    print(
        f"diffinv app: starting on http://{args.host}:{args.port} (Ctrl+C stops it); runs up to {args.max_size} "
        f"px and {args.max_iterations} iterations; targets {', '.join(limits.targets)}; models from "
        f"{args.models_dir}, runs from {args.runs_dir}"
    )
    # One run at a time across sessions (the work events share one slot; others wait in the queue).
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        ssr_mode=False,
        footer_links=[],
        max_file_size=MAX_UPLOAD,
    )
    return 0
