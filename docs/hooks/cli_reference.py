"""MkDocs hook: the command-line reference, generated from diffinv's own parsers.

A line ``<!-- cli-reference -->`` in a page is replaced by one section per subcommand, holding
its ``--help`` as argparse prints it (80 columns), so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


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


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
