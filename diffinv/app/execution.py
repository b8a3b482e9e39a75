"""The run execution behind the tabs: one run at a time across sessions, in a worker thread, streamed as events.

:meth:`RunExecution._stream` runs a tab's work in a worker thread once the previous run has stopped, and yields
what it emits (with heartbeats, so that a closed page is noticed and its run cancelled at the next iteration);
:meth:`RunExecution._invert_one` inverts one feature map, emitting the loss and, every few iterations, the
current image. A part of :class:`~diffinv.app.runner.Workbench` (whose constructor sets the attributes used here).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..io import to_pil
from ..metrics import psnr, ssim, top1_agreement
from ..targets import TargetNetwork
from .visitor import RUN_BUSY, InvertRequest, Session

__all__ = ["RunExecution"]


def _uint8(image: torch.Tensor) -> np.ndarray:
    return np.asarray(to_pil(image))


class RunExecution:
    """The one-run slot and the streamed run of :class:`~diffinv.app.runner.Workbench`."""

    @property
    def running(self) -> bool:
        """A run's work is going on (held from its start until its worker has stopped, cancelled or not)."""
        return self._run_lock.locked()

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
