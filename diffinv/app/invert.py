"""The Invert tab's work: one image inverted at one layer, streamed as :class:`~diffinv.app.visitor.Update` s.

A part of :class:`~diffinv.app.runner.Workbench`; its page is :mod:`diffinv.app.ui.invert`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..features import FeatureSet
from .execution import _uint8
from .visitor import WAITING, BusyError, InvertRequest, Session, Update, _chosen_layer

__all__ = ["InvertTab"]


class InvertTab:
    """:meth:`invert` of :class:`~diffinv.app.runner.Workbench`."""

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
