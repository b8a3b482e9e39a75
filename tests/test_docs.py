"""The documentation's commands and Python blocks, against the real code.

Every ``diffinv ...`` command of a ``bash`` block in the README and the docs site parses with the real
parsers (``torchrun``/``accelerate``/``srun`` lines: the part after ``-m diffinv``); every ``pip install``
names extras that exist and every ``python examples/...`` a script that exists. Every ``python`` block runs,
page by page in one namespace (as a reader would run them in order), at tiny sizes: sizes become 32 px,
iterations 2, and the Stable Diffusion folder a saved random-weight ``tiny`` pipeline.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from diffinv.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_VARIABLES = {"$L": "blocks.1"}  # the loop variable of the bench guide's `for L in ...`
TINY = [  # (pattern, replacement) applied to Python blocks: the same code at test sizes
    (r"\b(128|224|256|512)\b", "32"),
    (r"iterations=\d+", "iterations=2"),
]


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (page.relative_to(ROOT).as_posix(), m.group(2))
        for page in PAGES
        for m in FENCE.finditer(page.read_text())
        if m.group(1) == language
    ]


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at ``&&``,
    ``;``, ``|`` and the words of ``for`` loops."""
    script = re.sub(r"\\\n\s*", " ", script)
    commands = []
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for variable, value in SHELL_VARIABLES.items():
            line = line.replace(variable, value)
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", ";", "|", "||") or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    current.append(word[:-1])
                if current:
                    commands.append(current)
                current = []
            elif not current and word in ("do", "then", "done", "fi"):
                continue
            else:
                current.append(word)
    return [c for c in commands if c and c[0] != "for"]


def _diffinv_args(command: list[str]) -> list[str] | None:
    """The arguments of ``diffinv`` in ``command``: ``diffinv ARGS``, or ``... -m diffinv ARGS`` of a launcher."""
    if command[0] == "diffinv":
        return command[1:]
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == "diffinv":
            return command[i + 2 :]
    return None


SHELL = [(page, command) for page, block in _blocks("bash") for command in _commands(block)]
PYTHON_PAGES = sorted({page for page, _ in _blocks("python")})


def test_the_docs_hold_commands_and_python():
    """The collection itself: a change of fence syntax that hid every block would pass everything below."""
    assert sum(_diffinv_args(c) is not None for _, c in SHELL) >= 40
    assert {"README.md", "docs/guides/invert.md", "docs/guides/diffusion.md"} <= set(PYTHON_PAGES)


@pytest.mark.parametrize("page, command", [(p, c) for p, c in SHELL if _diffinv_args(c) is not None])
def test_diffinv_commands_parse(page, command, tmp_path, monkeypatch):
    args = _diffinv_args(command)
    monkeypatch.setenv("HOME", str(tmp_path))  # `~/...` folders are made where the test can make them
    monkeypatch.chdir(tmp_path)
    for flag, value in zip(args, args[1:]):
        if flag.endswith("-dir"):  # the folders a command checks when it parses (the app's --models-dir, ...)
            Path(value).expanduser().mkdir(parents=True, exist_ok=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exit:
        if exit.code != 0:  # `--help` and `--version` exit 0
            pytest.fail(f"{page}: `diffinv {shlex.join(args)}` does not parse:\n{err.getvalue()}")


def test_pip_extras_and_example_scripts_exist():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = set(config["options.extras_require"])
    checked = 0
    for page, command in SHELL:
        for word in command:
            for extras_asked in re.findall(r"^\.\[([\w,-]+)\]$", word):
                assert set(extras_asked.split(",")) <= extras, (page, word)
                checked += 1
            if word.startswith("examples/") and word.endswith(".py"):
                assert (ROOT / word).is_file(), (page, word)
                checked += 1
    assert checked >= 5


@pytest.fixture(scope="module")
def docs_sd_folder(tmp_path_factory):
    """A saved random-weight ``tiny`` pipeline: what ``path/to/stable-diffusion`` stands for in the blocks."""
    from diffinv.pipelines import load_pipeline

    folder = tmp_path_factory.mktemp("sd") / "tiny"
    load_pipeline("tiny", target="tf_efficientnet_lite0", layer="blocks.2").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page, docs_sd_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block_page, code in _blocks("python"):
        if block_page != page:
            continue
        for pattern, replacement in TINY:
            code = re.sub(pattern, replacement, code)
        code = code.replace('"path/to/stable-diffusion"', repr(str(docs_sd_folder)))
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{page} (python block)", "exec"), namespace)
    assert len(namespace) > 1
