"""Prompt files for text conditioning, loaded by name.

The ``.txt`` files next to this module hold one prompt per line:

* ``imagenet_classes`` — ``"a photo of a {class}"`` for the 1,000 ImageNet classes, in
  class-index order (line ``i`` is class ``i``; from torchvision's ResNet-50 metadata);
* ``backgrounds`` — descriptions of a scene's background (the paper this project follows
  finds these help more than foreground descriptions);
* ``foregrounds`` — descriptions of the main object.

A prompt argument can name lines of a file with ``@``: ``"@imagenet_classes:285"`` is
line 285, ``"@backgrounds:0,3"`` one line per image, and ``"@backgrounds"`` the whole
file (one line per image). Any other string is a literal prompt.

This module is ``diffinv.prompts`` (``setup.cfg`` maps the top-level ``prompts/`` folder
onto that name), so the loader and its data files install together.

Example:
    >>> load_prompts("imagenet_classes")[285]
    'a photo of a Egyptian cat'
    >>> resolve_prompts("@imagenet_classes:285,1", 2)
    ['a photo of a Egyptian cat', 'a photo of a goldfish']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CLASS_TEMPLATE", "PROMPT_DIR", "available_prompt_files", "class_prompt", "load_prompts", "resolve_prompts"]

PROMPT_DIR = Path(__file__).resolve().parent
CLASS_TEMPLATE = "a photo of a {}"


def available_prompt_files() -> list[str]:
    """Names of the bundled prompt files (usable as ``load_prompts(name)`` and ``"@name"``)."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


def load_prompts(name: str | os.PathLike) -> list[str]:
    """The prompts of a bundled file (by name, e.g. ``"backgrounds"``) or of a ``.txt`` path.

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        FileNotFoundError: the name is neither a bundled prompt file nor an existing file.
    """
    path = Path(name)
    if not path.is_file():
        path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file {str(name)!r} not found: not a file and not one of the bundled prompt files "
            f"({', '.join(available_prompt_files())})."
        )
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def class_prompt(class_name: str) -> str:
    """``"a photo of a {class_name}"``: the template of ``imagenet_classes.txt``."""
    return CLASS_TEMPLATE.format(class_name)


def resolve_prompts(prompt: str | Sequence[str], batch_size: int, name: str = "prompt") -> list[str]:
    """One prompt per image from a string, a list, or an ``@file[:i[,j...]]`` reference.

    Args:
        prompt: a literal prompt (used for every image), a list with one prompt per image
            (each may be an ``@file:i`` reference), or an ``@file`` reference.
        batch_size: how many images are inverted.
        name: the argument name used in error messages.

    Raises:
        ValueError: the number of prompts does not match ``batch_size``, or a line index is
            out of range.
    """
    if isinstance(prompt, str):
        prompts = _from_reference(prompt, name) if prompt.startswith("@") else [prompt]
        if len(prompts) == 1:
            return prompts * batch_size
    else:
        prompts = []
        for item in prompt:
            if not isinstance(item, str):
                raise TypeError(f"`{name}` must be a string or a list of strings, got an item {item!r}.")
            resolved = _from_reference(item, name) if item.startswith("@") else [item]
            if len(resolved) != 1:
                raise ValueError(f"`{name}` item {item!r} names {len(resolved)} prompts; a list item must name one.")
            prompts += resolved
    if len(prompts) != batch_size:
        raise ValueError(
            f"`{name}` gives {len(prompts)} prompts for {batch_size} feature maps; give one or {batch_size}."
        )
    return prompts


def _from_reference(reference: str, name: str) -> list[str]:
    """``"@file"`` -> all lines, ``"@file:3"`` -> line 3, ``"@file:3,7"`` -> lines 3 and 7."""
    file, _, selection = reference[1:].partition(":")
    lines = load_prompts(file)
    if not selection:
        return lines
    try:
        indices = [int(i) for i in selection.split(",")]
    except ValueError:
        raise ValueError(f"`{name}` {reference!r}: expected '@file:INDEX[,INDEX...]' with integer indices.") from None
    bad = [i for i in indices if not 0 <= i < len(lines)]
    if bad:
        raise ValueError(
            f"`{name}` {reference!r}: line index {bad[0]} is out of range; {file!r} has {len(lines)} prompts."
        )
    return [lines[i] for i in indices]
