"""The ``diffinv`` command: one module per subcommand (see ``diffinv COMMAND --help``).

The only place argparse lives. Every user error is reported as ``diffinv CMD: error: ...``
with exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

from .. import __version__
from ..io import check_environment
from ..jobs.store import RunSettingsError
from ..pipelines.definitions import ModelFilesNotFoundError
from ..targets import WeightsNotFoundError
from . import app, atlas, audit, bench, channels, dead_filters, extract, invert, train, video, visualize
from .common import UsageError, check_unique_lists

__all__ = ["build_parser", "main"]

COMMANDS = (extract, invert, bench, atlas, video, train, visualize, channels, dead_filters, audit, app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinv", description="Reconstruct images from deep-network features.")
    parser.add_argument("--version", action="version", version=f"diffinv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parsers(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command``."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


_LIBRARY = str(Path(__file__).resolve().parents[1])


@contextlib.contextmanager
def _warnings_as_notes(command: str):
    """diffinv's own warnings said as ``diffinv CMD: warning: ...`` (not as Python's ``file:line: UserWarning``);
    those of other libraries as Python says them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(_LIBRARY):
            print(f"diffinv {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


# Errors that a user's input can cause: reported in one line, exit code 2.
USER_ERRORS = (
    UsageError,
    RunSettingsError,
    WeightsNotFoundError,
    ModelFilesNotFoundError,
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ImportError,
)


def main(argv=None) -> int:
    """Runs one command; returns the exit code (0 done, 2 usage error, 130 interrupted, 1 other failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_unique_lists(_command_parser(parser, args.command), args)  # a value given twice: argparse's error
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves (--workers)
    try:
        check_environment()  # a bad DIFFINV_* variable fails here, before any work
        with _warnings_as_notes(args.command):
            return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        out = getattr(args, "out", None)
        kept = f" What was finished is kept in {out!r}; run the same command again to resume." if out else ""
        print(f"\ndiffinv {args.command}: interrupted.{kept}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        if os.environ.get("RANK", "0") != "0":
            # under a launch every process meets the same input error; the launcher stops the others when
            # one exits, so the others wait: rank 0 says it once, or this one if rank 0 is far behind
            time.sleep(2)
        print(f"diffinv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug or a failure of the machine: still no traceback unless asked for
        if args.debug:
            raise
        print(
            f"diffinv {args.command}: error: {type(err).__name__}: {err} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
