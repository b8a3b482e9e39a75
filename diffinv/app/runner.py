"""The work behind the browser app, free of Gradio: :class:`Workbench`, what the app's buttons do.

The Workbench turns the app's fields into the objects the command line builds (the inverter from the registry,
:func:`~diffinv.inverters.inverter_spec`, so a wrong field gives the command line's message) after checking each
against the server's :class:`~diffinv.app.limits.Limits`, and keeps the built targets in a cache bounded in bytes.
Its parts: the visitor state (:mod:`~diffinv.app.visitor`), the run execution (:mod:`~diffinv.app.execution`:
one run at a time, streamed as updates, Cancel) and one module per tab (:mod:`~diffinv.app.invert`,
:mod:`~diffinv.app.depth`, :mod:`~diffinv.app.channels`, :mod:`~diffinv.app.runs`).

Example:
    >>> bench = Workbench()
    >>> request = InvertRequest(image="chelsea", layer="blocks.2", method="pixel", iterations=50, size=64)
    >>> for update in bench.invert(request, bench.session("me")):
    ...     print(update.message)
"""

from __future__ import annotations

import dataclasses
import gc
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..inverters import INVERTERS, inverter_spec, memory_costs
from ..io import from_array, load_image, sample_images
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
from .channels import ChannelsTab, ChannelView
from .depth import DepthTab
from .execution import RunExecution
from .invert import InvertTab
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
)
from .runs import RunsTab, RunView
from .visitor import (
    BUSY,
    DEFAULT_TARGET,
    PHOTOS,
    RUN_BUSY,
    WAITING,
    BusyError,
    InvertRequest,
    Session,
    Update,
    error_message,
)

__all__ = [
    "BUSY",
    "DEFAULT_TARGET",
    "DEFAULT_TARGET_CACHE",
    "PHOTOS",
    "RUN_BUSY",
    "WAITING",
    "BusyError",
    "ChannelView",
    "InvertRequest",
    "RunView",
    "Session",
    "Update",
    "Workbench",
    "error_message",
]

#: The most bytes of target weights (parameters and buffers) the app keeps built between runs: EfficientNet-Lite0
#: takes 18 MiB per size and layer set asked for.
DEFAULT_TARGET_CACHE = 512 * 2**20


class Workbench(InvertTab, DepthTab, ChannelsTab, RunsTab, RunExecution):
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
