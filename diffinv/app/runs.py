"""The Runs tab's work: a ``diffinv bench`` run folder under the server's runs folder, read safely.

A part of :class:`~diffinv.app.runner.Workbench`; its page is :mod:`diffinv.app.ui.runs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .limits import run_folder, served_file

__all__ = ["RunView", "RunsTab"]


@dataclass
class RunView:
    """A ``diffinv bench`` run folder, as the Runs tab shows it."""

    folder: Path
    table: str
    records: list[dict]
    settings: dict
    grid: Path | None
    plots: list[Path]


class RunsTab:
    """:meth:`open_run` of :class:`~diffinv.app.runner.Workbench`."""

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
