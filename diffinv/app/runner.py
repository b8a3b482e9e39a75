"""The work behind the browser app, free of Gradio: inputs, runs streamed as updates, run folders.

:class:`Workbench` turns the app's fields into the same objects the command line builds (the
inverter comes from the registry, :func:`~diffinv.inverters.inverter_spec`, which the command line
calls too, so a wrong field gives the same message, naming the option), runs one inversion at a time per browser session
(:class:`Session`) in a worker thread, and yields :class:`Update` s as the optimization goes: the
current reconstruction every few iterations, the loss curve, then the metrics. ``Cancel`` stops
the optimization at the next iteration; each image keeps its best iterate so far. So does closing
the update stream (a closed page: Gradio closes the generator), and one run holds the machine at a
time across sessions: a new run waits until the previous one has stopped.

Every field a visitor sends is checked against the server's :class:`~diffinv.app.limits.Limits`
first (sizes, iterations, seeds, counts; targets only from the server's allow-list, ``--targets``; files only
under ``--models-dir``, run folders only under ``--runs-dir``; an upload only when the page's upload route wrote
it), and a visitor's value is shown cut short in a message. A target's weights are built inside the one-run slot,
after a memory check, and kept in a cache bounded in bytes (:attr:`Workbench.target_cache_bytes`); the layer list
of a target comes from its architecture alone (the ``meta`` device: no weights, no memory).

Example:
    >>> bench = Workbench()
    >>> request = InvertRequest(image="chelsea", layer="blocks.2", method="pixel", iterations=50, size=64)
    >>> for update in bench.invert(request, bench.session("me")):
    ...     print(update.message)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..features import FeatureSet
from ..interpret.channels import channel_activations, heat_maps, invert_channels, overlay, top_channels
from ..interpret.objectives import channel
from ..interpret.visualize import visualize
from ..inverters import INVERTERS, inverter_spec, memory_costs, options_for
from ..io import SAMPLE_PHOTOS, from_array, load_image, sample_images, to_pil
from ..jobs.report import write_depth_plot
from ..metrics import psnr, ssim, top1_agreement
from ..pipelines.definitions import DEFINITIONS as MODEL_DEFINITIONS
from ..resources import MARGIN, InsufficientMemoryError, available_memory, check_job_memory, format_bytes
from ..targets import (
    DEFAULT_LAYERS,
    TargetNetwork,
    WeightsMismatchError,
    architecture,
    installed_targets,
    module_bytes,
)
from .limits import (
    MAX_SEED,
    MIN_SIZE,
    Limits,
    Upload,
    _shown,
    bounded_int,
    check_photo,
    check_target,
    resolve_folder,
    resolve_weights,
    run_folder,
    served_file,
)

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TARGET_CACHE",
    "PHOTOS",
    "RUN_BUSY",
    "BusyError",
    "ChannelView",
    "InvertRequest",
    "RunView",
    "Session",
    "Update",
    "Workbench",
    "error_message",
]

DEFAULT_TARGET = "tf_efficientnet_lite0"
#: The most bytes of target weights (parameters and buffers) the app keeps built between runs: EfficientNet-Lite0
#: takes 18 MiB per size and layer set asked for.
DEFAULT_TARGET_CACHE = 512 * 2**20
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


@dataclass
class RunView:
    """A ``diffinv bench`` run folder, as the Runs tab shows it."""

    folder: Path
    table: str
    records: list[dict]
    settings: dict
    grid: Path | None
    plots: list[Path]


@dataclass
class ChannelView:
    """The Channels tab: the layer's channels ranked by mean activation on the image.

    Attributes:
        ranking: ``[(channel, mean activation)]``, strongest first.
        maps: ``[(activation map (H, W, 3) uint8, caption)]`` of those channels, upsampled to the image.
        visualizations: ``[(image, caption)]``: each channel's per-channel inversion, then its feature
            visualization (or what a custom :attr:`Workbench.channel_visualizer` returns).
    """

    ranking: list[tuple[int, float]]
    maps: list
    visualizations: list
    note: str


def _uint8(image: torch.Tensor) -> np.ndarray:
    return np.asarray(to_pil(image))


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


class Workbench:
    """What the app's buttons do; one per app, shared by its sessions.

    Args:
        inverter_factory: ``(method, options) -> (target -> Inverter)``; default the registry's
            (:func:`~diffinv.inverters.inverter_spec`, which checks every option before any work).
        user_errors: the exception types the command line reports as user errors.
        stream_every: a streamed image every this many iterations (at least 20 per run).
        channel_visualizer: ``(target, layer, channels, image, size) -> [(image, caption)]``: replaces the
            Channels tab's per-channel inversions and feature visualizations (default ``None``: those of
            :mod:`diffinv.interpret`).
        work_dir: where plots are written (default: a temporary folder).
        device: where targets and inverters run (``cpu``, ``cuda``, ``cuda:N``).
        limits: the server's bounds, file roots and allowed targets (default :class:`~diffinv.app.limits.Limits`:
            sizes up to 512, 1000 iterations, no files, the targets whose weights are installed).
        wait_seconds: how long a new run waits for the previous one (a cancelled run stops at its next
            iteration) before it is refused as busy.
        heartbeat_seconds: while a run works, an update (``heartbeat``, nothing new to show) whenever this
            long passes without one, so that a server notices a closed page at once (``diffinv app``: 0.5 s);
            ``None`` (default): none, updates come only with the run's progress (every few iterations).
        target_cache_bytes: the most bytes of built targets (parameters and buffers) kept between runs; the
            oldest go first (the one in use stays, whatever its size).
    """

    def __init__(
        self,
        inverter_factory: Callable[[str, dict], Callable[[TargetNetwork], object]] | None = None,
        *,
        user_errors: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, ImportError),
        stream_every: int = 5,
        channel_visualizer: Callable | None = None,
        work_dir: str | Path | None = None,
        device: str = "cpu",
        limits: Limits | None = None,
        wait_seconds: float = 60.0,
        heartbeat_seconds: float | None = None,
        target_cache_bytes: int = DEFAULT_TARGET_CACHE,
    ):
        self.device = str(device)
        self.limits = limits or Limits()
        self.wait_seconds = wait_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.inverter_factory = inverter_factory or (lambda method, options: inverter_spec(method, **options).build)
        self.user_errors = user_errors
        self.stream_every = stream_every
        self.channel_visualizer = channel_visualizer
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="diffinv-app-"))
        self._sessions: dict[str, Session] = {}
        self.targets = tuple(self.limits.targets) if self.limits.targets is not None else tuple(installed_targets())
        self.target_cache_bytes = target_cache_bytes
        self._targets: OrderedDict[tuple, tuple[TargetNetwork, int]] = OrderedDict()  # key -> (target, bytes)
        self._guard = threading.Lock()
        self._run_lock = threading.Lock()  # one run on the machine at a time, across sessions
        self._runs = 0

    def error_text(self, err: BaseException) -> str:
        """:func:`error_message` with the server's folders left out: a path under ``--models-dir`` or
        ``--runs-dir`` is shown by its name there, as the visitor gave it."""
        text = error_message(err, self.user_errors)
        for root in (self.limits.models_dir, self.limits.runs_dir):
            if root is not None:
                text = text.replace(os.path.realpath(root) + os.sep, "")
        return text

    @property
    def running(self) -> bool:
        """A run's work is going on (held from its start until its worker has stopped, cancelled or not)."""
        return self._run_lock.locked()

    # ------------------------------------------------------------------ sessions and targets
    def session(self, key: str | None) -> Session:
        with self._guard:
            return self._sessions.setdefault(key or "", Session())

    def target(self, name: str, weights: str, size: int, layers: tuple[str, ...] | None = None) -> TargetNetwork:
        """The target network, from the cache or built inside the one-run slot (waiting for a run to end; a
        :class:`BusyError` after :attr:`wait_seconds`). ``name``: one of :attr:`targets`; ``weights``:
        ``default``, ``random:SEED`` or a file name under the models folder. Before it is built, its weights'
        bytes (from its architecture) are checked against the memory available; a file that does not load is
        reported without its contents."""
        name = check_target(name, self.targets)
        key = (name, resolve_weights(weights, self.limits), int(size), layers)
        with self._guard:
            if key in self._targets:
                self._targets.move_to_end(key)
                return self._targets[key][0]
        if not self._run_lock.acquire(timeout=self.wait_seconds):
            raise BusyError(RUN_BUSY)
        try:
            return self._target(name, weights, size, layers)
        finally:
            self._run_lock.release()

    @property
    def cached_target_bytes(self) -> int:
        """Bytes of the targets the cache holds (parameters and buffers)."""
        with self._guard:
            return sum(size for _, size in self._targets.values())

    def _target(self, name: str, weights: str, size: int, layers: tuple[str, ...] | None = None) -> TargetNetwork:
        """:meth:`target` for a caller that holds the run slot."""
        name = check_target(name, self.targets)
        source = resolve_weights(weights, self.limits)
        key = (name, source, int(size), layers)
        with self._guard:
            if key in self._targets:
                self._targets.move_to_end(key)
                return self._targets[key][0]
        need = architecture(name).weight_bytes
        with self._guard:  # the oldest targets that go to make room for the new one
            keys, held = list(self._targets), sum(b for _, b in self._targets.values())
            leaving = []
            while keys and held + need > self.target_cache_bytes:
                leaving.append(keys.pop(0))
                held -= self._targets[leaving[-1]][1]
            freed = sum(self._targets[k][1] for k in leaving)
        # the weights, and while a file loads its state dict beside them, with the allocator's margin; what the
        # cache gives up counts as free (nothing is given up for a target that is refused)
        cost = int(need * (1 if source == "default" or source.startswith("random:") else 2) * MARGIN)
        have = available_memory(self.device) + freed
        if cost > have:
            raise InsufficientMemoryError(
                f"`--target` {name!r}: building it needs an estimated {format_bytes(cost)} (its weights, "
                f"{format_bytes(need)}, with margin), but only {format_bytes(have)} is available on {self.device}; "
                f"pick a smaller target."
            )
        if leaving:
            with self._guard:
                for k in leaving:
                    self._targets.pop(k, None)
            gc.collect()
        try:
            target = TargetNetwork.from_name(
                name, list(layers) if layers else None, weights=source, input_size=(int(size), int(size))
            )
        except WeightsMismatchError:
            raise  # counts the keys and shapes that do not fit; shows no tensor of the file
        except Exception as err:
            if source in ("default",) or source.startswith("random:"):
                raise
            # the loader's text may quote the file (a text file: "Unsupported operand 83", its first byte)
            raise ValueError(
                f"`--weights` {_shown(weights.strip())}: could not be loaded as the state dict of "
                f"{name!r} ({type(err).__name__}); expected a file written by "
                f"torch.save(model.state_dict()) for this target."
            ) from None
        target = target.to(self.device).eval()
        with self._guard:
            self._targets[key] = (target, module_bytes(target))
            while len(self._targets) > 1 and sum(b for _, b in self._targets.values()) > self.target_cache_bytes:
                self._targets.popitem(last=False)
        return target

    def layer_choices(self, name: str = DEFAULT_TARGET, weights: str = "default") -> tuple[list[str], str]:
        """``(layers, default)``: the target's default depths first, then every other module name;
        the default is a middle depth (``blocks.2`` for EfficientNet-Lite0). Read from the target's architecture
        (the ``meta`` device): nothing is built, whatever the target (``weights`` is checked, not loaded)."""
        name = check_target(name, self.targets)
        resolve_weights(weights, self.limits)
        defaults = list(DEFAULT_LAYERS.get(name, ()))
        modules = architecture(name).layers
        names = defaults + [n for n in modules if n not in defaults]
        default = defaults[max(0, len(defaults) // 2 - 1)] if defaults else architecture(name).default_layer
        return names, default

    def load_image(self, image: str | Upload | np.ndarray | None, size: int) -> tuple[torch.Tensor, str]:
        """``((1, 3, size, size) in [0, 1], name)`` of a bundled photo, an upload (read with
        :func:`diffinv.io.load_image`: the pixel limit, ``DIFFINV_MAX_IMAGE_PIXELS``, applies), an image file or
        an array. An upload that cannot be read is reported by the visitor's own file name, never its server
        path."""
        if image is None or (isinstance(image, str) and not image.strip()):
            raise ValueError("`--images`: no image; pick a bundled photo or upload one.")
        if isinstance(image, Upload):
            shown = _shown(image.name) if image.name else "the upload"
            try:
                return load_image(image.path, size).unsqueeze(0), "upload"
            except (ValueError, OSError) as err:
                text = str(err).replace(repr(image.path), shown).replace(image.path, shown)
                text = text.replace(os.path.dirname(image.path) + os.sep, "")
                raise ValueError(f"`--images` (upload {shown}): {text}") from None
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
                raise ValueError(
                    f"`--images`: the uploaded image has shape {image.shape}; expected (H, W) or (H, W, 3)."
                )
            return from_array(image, size).unsqueeze(0), "upload"
        if image in PHOTOS:
            return sample_images([image], size), image
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"`--images` {_shown(image)}: no such file; expected one of {', '.join(PHOTOS)} or an image file."
            )
        return load_image(path, size).unsqueeze(0), path.name

    # ------------------------------------------------------------------ Invert
    def checked(self, request: InvertRequest) -> InvertRequest:
        """The request with its numbers checked against the server's :attr:`limits` and its folders resolved
        under the models folder (raises ``ValueError`` naming the field, the value and the bound)."""
        limits = self.limits
        check_photo(request.image)
        target = check_target(request.target, self.targets)
        if not isinstance(request.method, str) or request.method not in INVERTERS:
            raise ValueError(f"`--method` {_shown(request.method)}: expected one of {', '.join(INVERTERS)}.")
        resolve_weights(request.weights, limits)
        size = bounded_int(request.size, "--size", MIN_SIZE, limits.max_size, "this server's --max-size")
        fixed = architecture(target).input_size
        if fixed is not None and (size, size) != fixed:
            above = f", above this server's --max-size {limits.max_size}" if fixed[0] > limits.max_size else ""
            raise ValueError(
                f"`--size` {size}: target {target!r} takes {fixed[0]} x {fixed[1]} images only (its "
                f"input size is fixed); expected --size {fixed[0]}{above}."
            )
        iterations = request.iterations
        if iterations is not None:
            iterations = bounded_int(
                iterations, "--iterations", 1, limits.max_iterations, "this server's --max-iterations"
            )
        steps = None if request.steps is None else bounded_int(request.steps, "--steps", 1, limits.max_steps)
        return dataclasses.replace(
            request,
            target=target,
            size=size,
            iterations=iterations,
            steps=steps,
            seed=bounded_int(request.seed, "--seed", 0, MAX_SEED, "2**32 - 1"),
            model=resolve_folder(request.model, "--model", limits, builtin=MODEL_DEFINITIONS),
            decoder=resolve_folder(request.decoder, "--decoder", limits),
            mapper=resolve_folder(request.mapper, "--mapper", limits),
        )

    def _check(self, request: InvertRequest, layers: tuple[str, ...] = (), images: int = 1):
        """Every field checked (the CLI's messages) before any work (``request``: :meth:`checked`), and the
        job's estimated peak memory against the machine's (:func:`~diffinv.resources.check_job_memory`, as the
        command line does); returns ``target -> Inverter``."""
        options = request.options(self.device)
        make_inverter = self.inverter_factory(request.method, options)
        layers = layers or ((request.layer,) if request.layer else ())
        if layers:
            check_job_memory(
                request.target,
                layers,
                request.size,
                images=images,
                methods=memory_costs([request.method], options),
                device=self.device,
            )
        return make_inverter

    def _metrics(self, target: TargetNetwork, recon: torch.Tensor, original: torch.Tensor, out) -> dict:
        device = target.mean.device
        recon, original = recon.to(device), original.to(device)
        agree = top1_agreement(target, recon, original)
        metrics = {
            "psnr": float(psnr(recon, original)[0]),
            "ssim": float(ssim(recon, original)[0]),
            "feature_residual": float(out.feature_residual[0]),
            "top1_agreement": None if agree is None else float(agree[0]),
            "seconds": float(out.seconds),
        }
        if target.has_classifier:
            metrics["class_original"] = target.class_name(int(target.predict(original)[0]))
            metrics["class_reconstruction"] = target.class_name(int(target.predict(recon)[0]))
        return metrics

    def _stream(self, session: Session, work: Callable[[Callable], None]) -> Iterator[tuple]:
        """Runs ``work(emit)`` in a worker thread and yields what it emits; an exception is yielded as
        ``("error", message)``. The session (claimed by the caller) is released when the work ends.

        One run at a time: the work starts once the previous run's worker has stopped (``("wait",)`` is
        yielded while it waits, ``("error", RUN_BUSY)`` after :attr:`wait_seconds`). ``("beat",)`` is yielded
        whenever :attr:`heartbeat_seconds` (if set) pass without an event. Closing this generator before the work
        has ended (Gradio closes it when the page is closed or the job cancelled) sets the session's Cancel,
        so the work stops at its next iteration."""
        events: queue.Queue = queue.Queue()
        started = finished = False
        try:
            deadline = time.monotonic() + self.wait_seconds
            while not self._run_lock.acquire(timeout=self.heartbeat_seconds or 0.5):
                if time.monotonic() > deadline:
                    yield ("error", RUN_BUSY)
                    return
                yield ("wait",)

            def worker():
                try:
                    work(events.put)
                except BaseException as err:  # shown in the page, never as a traceback
                    events.put(("error", self.error_text(err)))
                finally:
                    self._run_lock.release()
                    session.release()
                    events.put(None)

            try:
                threading.Thread(target=worker, daemon=True, name="diffinv-app-run").start()
            except BaseException:
                self._run_lock.release()
                raise
            started = True
            while True:
                try:
                    event = events.get(timeout=self.heartbeat_seconds)
                except queue.Empty:
                    yield ("beat",)
                    continue
                if event is None:
                    finished = True
                    return
                yield event
        finally:
            if not started:
                session.release()
            elif not finished:
                session.cancel.set()

    def _invert_one(self, target, make_inverter, features, request: InvertRequest, session, emit, label: str):
        """Inverts one feature map; emits ``("step", iteration, mean loss, image or None)`` every few
        iterations; returns the InversionOutput."""
        inverter = make_inverter(target)
        inverter.check_image_size((request.size, request.size))
        config = inverter.config
        total = request.iterations or getattr(config, "iterations", None)
        if total and total > self.limits.max_iterations:
            raise ValueError(
                f"`--iterations`: the method's default, {total}, is above this server's --max-iterations "
                f"{self.limits.max_iterations}; enter a number of iterations."
            )
        every = max(1, min(self.stream_every, (total or 100) // 20 or 1))

        def callback(i, per_image, render):
            loss = float(per_image.float().mean())
            if i % every == 0 or (total and i == total - 1) or session.cancel.is_set():
                emit(("step", label, i + 1, total, loss, _uint8(render()[0]) if config.streams_images else None))
            else:
                emit(("loss", label, i + 1, total, loss))
            return session.cancel.is_set()

        kwargs = {"callback": callback} if inverter.white_box else {}
        generator = torch.Generator().manual_seed(int(request.seed))
        return inverter.invert(features, generator=generator, progress=False, **kwargs)

    def _begin(self, request: InvertRequest, session: Session, layers_of: Callable[[InvertRequest], tuple]):
        """Claims ``session`` for a run and prepares it: ``(checked request, layers, make_inverter, original,
        image name, build)``. Raises :class:`BusyError` when the session runs already, else the first error of
        the fields (the session released again). ``build()`` gives the target: the run's work calls it inside the
        run slot (from the cache, or built then, after its memory check)."""
        session.claim()
        try:
            request = self.checked(request)
            layers = layers_of(request)
            make_inverter = self._check(request, layers)
            original, name = self.load_image(request.image, request.size)
            return (
                request,
                layers,
                make_inverter,
                original,
                name,
                lambda: self._target(request.target, request.weights, request.size, layers),
            )
        except BaseException:
            session.release()
            raise

    def invert(self, request: InvertRequest, session: Session) -> Iterator[Update]:
        """Inverts one image at one layer, streaming :class:`Update` s; the last one has the metrics."""
        try:
            request, _, make_inverter, original, name, build = self._begin(request, session, _chosen_layer)
        except BaseException as err:
            yield Update(str(err) if isinstance(err, BusyError) else self.error_text(err), error=True, done=True)
            return
        shown = [(_uint8(original[0]), f"original ({name})")]
        losses: list[tuple[int, float]] = []

        def work(emit):
            target = build()
            features = FeatureSet.extract(target, original.to(target.mean.device), request.layer, sources=[name])
            out = self._invert_one(target, make_inverter, features, request, session, emit, request.layer)
            emit(("done", out, self._metrics(target, out.images, original, out)))

        with contextlib.closing(self._stream(session, work)) as stream:
            yield from self._invert_updates(stream, request, session, shown, losses)

    def _invert_updates(self, stream, request: InvertRequest, session: Session, shown: list, losses: list):
        """The Invert tab's updates for the events of its run."""
        latest = None
        for event in stream:
            if event[0] in ("wait", "beat"):
                yield Update(WAITING) if event[0] == "wait" else Update("", heartbeat=True)
            elif event[0] == "error":
                yield Update(
                    event[1], images=shown + ([latest] if latest else []), losses=losses, error=True, done=True
                )
                return
            elif event[0] in ("step", "loss"):
                _, _, i, total, loss = event[:5]
                losses.append((i, loss))
                if event[0] == "step":
                    if event[5] is not None:
                        latest = (event[5], f"{request.method}, iteration {i}")
                    state = "cancelling" if session.cancel.is_set() else "running"
                    yield Update(
                        f"{state}: {request.method} at {request.layer}, iteration {i}/{total or '?'}, loss {loss:.4g}",
                        images=shown + ([latest] if latest else []),
                        losses=list(losses),
                    )
            elif event[0] == "done":
                _, out, metrics = event
                stopped = session.cancel.is_set() and len(out.loss_history) < (request.iterations or 0)
                word = f"cancelled after {len(out.loss_history)} iterations (best iterate kept)" if stopped else "done"
                yield Update(
                    f"{word}: {request.method} at {request.layer} in {out.seconds:.1f} s",
                    images=shown + [(_uint8(out.images[0]), f"{request.method} reconstruction")],
                    losses=list(losses),
                    metrics=metrics,
                    done=True,
                )

    # ------------------------------------------------------------------ Depth
    def depth(self, request: InvertRequest, session: Session) -> Iterator[Update]:
        """Inverts one image at each of the target's default layers (shallow to deep), side by side,
        then the PSNR-vs-depth plot (:func:`diffinv.jobs.report.write_depth_plot`)."""
        try:
            request, layers, make_inverter, original, name, build = self._begin(request, session, _default_layers)
        except BaseException as err:
            yield Update(str(err) if isinstance(err, BusyError) else self.error_text(err), error=True, done=True)
            return
        shown = [(_uint8(original[0]), f"original ({name})")]
        records: list[dict] = []
        with self._guard:
            self._runs += 1
            plot_path = self.work_dir / f"depth-{self._runs}" / "psnr_vs_depth.png"

        def work(emit):
            target = build()
            x = original.to(target.mean.device)
            for layer in layers:
                if session.cancel.is_set():
                    break
                features = FeatureSet.extract(target, x, layer, sources=[name])
                out = self._invert_one(target, make_inverter, features, request, session, emit, layer)
                metrics = self._metrics(target, out.images, original, out)
                records.append({"layer": layer, "method": request.method, "image": name, "white_box": True, **metrics})
                emit(("layer", layer, out, metrics))
            if records:
                write_depth_plot(records, plot_path, layers=[r["layer"] for r in records], methods=[request.method])
            emit(("done",))

        with contextlib.closing(self._stream(session, work)) as stream:
            yield from self._depth_updates(stream, request, layers, shown, records, plot_path)

    def _depth_updates(self, stream, request: InvertRequest, layers, shown, records, plot_path):
        """The Depth tab's updates for the events of its run."""
        for event in stream:
            if event[0] in ("wait", "beat"):
                yield Update(WAITING) if event[0] == "wait" else Update("", heartbeat=True)
            elif event[0] == "error":
                yield Update(event[1], images=list(shown), records=list(records), error=True, done=True)
                return
            elif event[0] == "step":
                _, layer, i, total, loss = event[:5]
                yield Update(
                    f"running: {request.method} at {layer} ({len(records) + 1}/{len(layers)}), iteration "
                    f"{i}/{total or '?'}, loss {loss:.4g}",
                    images=list(shown),
                    records=list(records),
                )
            elif event[0] == "layer":
                _, layer, out, metrics = event
                shown.append((_uint8(out.images[0]), f"{layer}: {metrics['psnr']:.2f} dB"))
                yield Update(
                    f"finished {layer} ({len(records)}/{len(layers)})",
                    images=list(shown),
                    metrics=metrics,
                    records=list(records),
                )
            elif event[0] == "done":
                word = "cancelled" if len(records) < len(layers) else "done"
                yield Update(
                    f"{word}: {len(records)} of {len(layers)} layers",
                    images=list(shown),
                    records=list(records),
                    plot=str(plot_path) if plot_path.is_file() else None,
                    done=True,
                )

    # ------------------------------------------------------------------ Runs
    def open_run(self, folder: str) -> RunView:
        """A ``diffinv bench`` / ``diffinv demo`` run folder under the runs folder (``limits.runs_dir``): its
        table, records, grid and plots. Only files whose real path stays under the runs folder are read (a
        symlink out of it is treated as absent); a file that does not parse is named, its contents never shown."""
        root = self.limits.runs_dir
        path = run_folder(folder, self.limits)
        name = str(folder).strip()

        def read_json(file: str):
            served = served_file(path, file, root)
            if served is None:
                return None
            try:
                return json.loads(served.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                raise ValueError(
                    f"`--out` {name!r}: its {file} could not be read as JSON; is the run folder intact?"
                ) from None

        manifest = read_json("manifest.json")
        if not isinstance(manifest, dict) or manifest.get("kind") != "bench":
            kind = manifest.get("kind") if isinstance(manifest, dict) else None
            raise ValueError(f"`--out` {name!r} holds a {str(kind)[:40]!r} run, not a 'bench' run.")
        results = read_json("results.json")
        records = results.get("records", []) if isinstance(results, dict) else []
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"`--out` {name!r}: its results.json holds no list of records; is the run folder intact?")
        table_file = served_file(path, "results.md", root)
        try:
            table = (
                table_file.read_text(encoding="utf-8")
                if table_file
                else ("_No results.md yet: the run has not finished its first table._")
            )
        except (OSError, UnicodeDecodeError):
            raise ValueError(f"`--out` {name!r}: its results.md could not be read as text.") from None
        grid = served_file(path, "grid.png", root)
        plots = sorted(
            p
            for p in (served_file(path, f.name, root) for f in path.glob("*.png") if f.name != "grid.png")
            if p is not None
        )
        return RunView(path, table, records, manifest.get("settings", {}), grid, plots)

    # ------------------------------------------------------------------ Channels
    def channels(self, request: InvertRequest, top: int = 8) -> ChannelView:
        """The ``top`` channels of ``request.layer`` ranked by mean activation on the image (the interpretability
        module, :mod:`diffinv.interpret`): where each fires (its heat map over the image), the image
        reconstructed from that channel alone with ``request.method`` (per-channel inversion), and the
        channel's feature visualization (pixel, Fourier parameterization), each with ``request.iterations``
        (default 128, or fewer to stay within the bound). A custom :attr:`channel_visualizer` replaces the last
        two. The work is not cancellable, so it is bounded: ``top`` x iterations at most ``--max-iterations``."""
        top = bounded_int(top, "--top", 1, self.limits.max_top, "this server's bound")
        request = self.checked(request)
        budget = self.limits.max_iterations  # one image per channel: the tab runs top x iterations image-iterations
        if request.iterations is None:
            request = dataclasses.replace(request, iterations=max(1, min(128, budget // top)))
        elif request.iterations * top > budget:
            raise ValueError(
                f"`--iterations` {request.iterations} x `--top` {top}: the Channels tab optimizes one "
                f"image per channel, and {request.iterations * top} image-iterations are above this "
                f"server's --max-iterations {budget}; lower either."
            )
        _chosen_layer(request)
        make_inverter = self._check(request, images=top)
        if not self._run_lock.acquire(timeout=self.wait_seconds):
            raise BusyError(RUN_BUSY)
        try:
            return self._channels(request, top, make_inverter)
        finally:
            self._run_lock.release()

    def _channels(self, request: InvertRequest, top: int, make_inverter) -> ChannelView:
        original, _ = self.load_image(request.image, request.size)
        target = self._target(request.target, request.weights, request.size, (request.layer,))
        activations = channel_activations(target, request.layer, original)[0]
        order = top_channels(activations[None], min(top, len(activations)))
        with torch.no_grad():
            feats = target.feature(original.to(target.mean.device), request.layer).float().cpu()
        overlays = overlay(original[0], heat_maps(feats, order, tuple(original.shape[-2:])))
        maps = [(_uint8(overlays[i]), f"channel {c}: mean {float(activations[c]):.3g}") for i, c in enumerate(order)]
        ranking = [(c, float(activations[c])) for c in order]
        if self.channel_visualizer is not None:
            visuals = list(self.channel_visualizer(target, request.layer, order, original, request.size))
            return ChannelView(ranking, maps, visuals, "Channels shown by the connected visualizer.")
        generator = torch.Generator().manual_seed(int(request.seed))
        alone = invert_channels(
            make_inverter(target), original, request.layer, order, generator=generator, progress=False
        )
        iterations = request.iterations
        shown = visualize(
            target,
            channel(request.layer, order),
            len(order),
            size=(request.size, request.size),
            iterations=iterations,
            generator=torch.Generator().manual_seed(int(request.seed)),
            progress=False,
        )
        visuals = [(_uint8(alone.images[i]), f"channel {c} alone ({request.method})") for i, c in enumerate(order)]
        visuals += [
            (_uint8(shown.images[i]), f"channel {c} visualized: {float(shown.values[i]):.3g}")
            for i, c in enumerate(order)
        ]
        note = (
            f"Per-channel inversion ({request.method}, only that channel kept) and feature visualization "
            f"(pixel, Fourier, {iterations} iterations) of the top {len(order)} channels."
        )
        return ChannelView(ranking, maps, visuals, note)
