"""The Depth tab's work: one image inverted at each of the target's default layers, then the PSNR-vs-depth plot.

A part of :class:`~diffinv.app.runner.Workbench`; its page is :mod:`diffinv.app.ui.depth`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..features import FeatureSet
from ..jobs.figures import write_depth_plot
from .execution import _uint8
from .visitor import WAITING, BusyError, InvertRequest, Session, Update, _default_layers

__all__ = ["DepthTab"]


class DepthTab:
    """:meth:`depth` of :class:`~diffinv.app.runner.Workbench`."""

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
