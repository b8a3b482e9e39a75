"""Visitor state: what a visitor sends (:class:`InvertRequest`), gets back (:class:`Update`) and holds (:class:`Session`).

A browser session runs one inversion at a time; its Cancel switch stops the run at the next iteration. Errors
reach the page in the command line's words (:func:`error_message`), never as a traceback.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..inverters import options_for
from ..io import SAMPLE_PHOTOS
from ..targets import DEFAULT_LAYERS, architecture
from .limits import Upload, _shown

__all__ = [
    "BUSY",
    "DEFAULT_TARGET",
    "PHOTOS",
    "RUN_BUSY",
    "WAITING",
    "BusyError",
    "InvertRequest",
    "Session",
    "Update",
    "error_message",
]

DEFAULT_TARGET = "tf_efficientnet_lite0"
PHOTOS = tuple(SAMPLE_PHOTOS)
BUSY = (
    "Busy: a run is already in progress in this session. Wait for it to finish, or press Cancel "
    "(runs of all sessions take turns: one at a time)."
)
RUN_BUSY = "Busy: another visitor's run is still going; try again in a moment (this server runs one at a time)."
WAITING = "waiting: the previous run is stopping (one run at a time)..."


class BusyError(RuntimeError):
    """This session already has a run in progress (or another visitor's run holds the machine)."""

    def __init__(self, message: str = BUSY):
        super().__init__(message)


def error_message(err: BaseException, user_errors: tuple[type[BaseException], ...] = (ValueError,)) -> str:
    """The command line's one-line text for an error: ``diffinv app: error: ...`` (a user error as it
    is, anything else with its type), never a traceback."""
    if isinstance(err, user_errors):
        return f"diffinv app: error: {err}"
    if isinstance(err, OSError) and err.strerror:  # never the file name: it may be a server path or 100k long
        return f"diffinv app: error: {type(err).__name__}: {err.strerror}"
    return f"diffinv app: error: {type(err).__name__}: {err}"


@dataclass
class InvertRequest:
    """The fields of the Invert and Depth tabs (names as the command line's flags).

    Attributes:
        image: a bundled photo's name (:data:`PHOTOS`), an :class:`~diffinv.app.limits.Upload` whose path the page
            has checked (:func:`~diffinv.app.limits.check_upload`), or an ``(H, W, 3)`` uint8 array.
        layer: the layer to invert (Depth: ignored, the target's default layers are used).
        model, decoder, mapper: folders for the methods that need them (``tiny`` for a random-weight
            diffusion model to try the path).
    """

    image: str | Upload | np.ndarray = "chelsea"
    target: str = DEFAULT_TARGET
    weights: str = "default"
    layer: str | None = None
    method: str = "pixel"
    iterations: int | None = 100
    size: int = 128
    seed: int = 0
    model: str | None = None
    decoder: str | None = None
    mapper: str | None = None
    steps: int | None = None

    def options(self, device: str = "cpu") -> dict:
        """The fields the method takes, as the registry's options (:func:`~diffinv.inverters.build_inverter`)."""
        blank = lambda v: v.strip() if isinstance(v, str) and v.strip() else None  # noqa: E731
        return options_for(
            self.method,
            iterations=self.iterations,
            model=blank(self.model),
            num_inference_steps=self.steps,
            mapper=blank(self.mapper),
            decoder=blank(self.decoder),
            device=device,
        )


@dataclass
class Update:
    """One step of a run, as the page shows it.

    Attributes:
        message: the status line (an error: the CLI's text, ``error`` set).
        images: ``[(image (H, W, 3) uint8, caption)]``: the original and the reconstruction(s) so far.
        losses: ``[(iteration, mean loss)]`` so far (Invert), or ``[]``.
        metrics: ``{name: value}`` once a reconstruction is finished (Depth: of the last layer).
        records: Depth: one dict per finished layer (layer, psnr, ssim, feature_residual, top1_agreement).
        plot: Depth: the PSNR-vs-depth plot (a PNG path) once every layer is finished.
        heartbeat: nothing new to show (the page skips it): yielded while the work runs, so that the
            server notices a closed page within a fraction of a second and cancels the run.
    """

    message: str
    images: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    plot: str | None = None
    error: bool = False
    done: bool = False
    heartbeat: bool = False  # nothing new to show; yielded so that a closed page is noticed (the page skips it)


class Session:
    """One browser session: at most one run at a time, and its Cancel switch."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cancel = threading.Event()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def claim(self) -> None:
        """Marks the session busy (raises :class:`BusyError` when it already is) and clears Cancel."""
        if not self._lock.acquire(blocking=False):
            raise BusyError()
        self.cancel.clear()

    def release(self) -> None:
        if self._lock.locked():
            self._lock.release()


def _chosen_layer(request: InvertRequest) -> tuple[str]:
    """The Invert and Channels tabs' one layer: a module of the (checked) target."""
    if not request.layer:
        raise ValueError("`--layer`: no layer chosen.")
    modules = architecture(request.target).layers
    if not isinstance(request.layer, str) or request.layer not in modules:
        raise ValueError(
            f"`--layer` {_shown(request.layer)} is not a module of {request.target!r}; expected one of "
            f"{', '.join(modules[:20])}"
            + (" ..." if len(modules) > 20 else "")
            + " (the page's layer list has them all)."
        )
    return (request.layer,)


def _default_layers(request: InvertRequest) -> tuple[str, ...]:
    """The Depth tab's layers: the target's default ones."""
    layers = tuple(DEFAULT_LAYERS.get(request.target, ()))
    if not layers:
        raise ValueError(
            f"`--layers`: target {_shown(request.target)} has no default layers; the Depth tab needs "
            f"one of {', '.join(DEFAULT_LAYERS)}."
        )
    return layers
