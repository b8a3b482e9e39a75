"""MkDocs hook: the pages generated from the code, so that they cannot drift from it.

* ``<!-- cli-reference -->`` becomes one section per subcommand, holding its ``--help`` as argparse
  prints it (80 columns);
* ``<!-- layout -->`` becomes the table of every module of ``diffinv/`` and ``pipelines/`` with the
  first line of its docstring.
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

MARKER = "<!-- cli-reference -->"
LAYOUT = "<!-- layout -->"
ROOT = Path(__file__).resolve().parents[2]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def cli_reference() -> str:
    """The markdown of every subcommand's help, in the order ``diffinv --help`` lists them."""
    os.environ["COLUMNS"] = "80"  # argparse wraps at $COLUMNS; a fixed width gives the same page everywhere
    from diffinv.cli import build_parser

    parser = build_parser()
    parts = ["## diffinv", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        parts += [f"## diffinv {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def layout() -> str:
    """A table row per module: its path and the first line of its docstring."""
    rows = ["| module | holds |", "|---|---|"]
    for folder in ("diffinv", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")
            rows.append(f"| `{path.relative_to(ROOT).as_posix()}` | {first} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    if LAYOUT in markdown:
        markdown = markdown.replace(LAYOUT, layout())
    return markdown
