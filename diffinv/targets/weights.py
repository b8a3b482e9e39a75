"""A target's weights: the ``weights`` argument (pretrained, ``random:SEED``, a file) and state-dict files."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..io.files import check_regular_file
from .errors import WeightsMismatchError, WeightsNotFoundError, _shown

__all__ = ["load_state_dict_into"]


def _weights_record(weights) -> tuple[str, int | None]:
    """``weights`` argument -> (what is recorded, random seed or None)."""
    if weights is None:
        return "random", None
    text = os.fspath(weights)
    if text == "random":
        raise ValueError(
            "`weights` 'random' needs a seed, e.g. 'random:0' (`--weights random:0`), so that features made with "
            "these weights can be checked and inverted later; `weights=None` in Python gives unseeded random weights."
        )
    if text.startswith("random:"):
        try:
            return f"random:{int(text[7:])}", int(text[7:])
        except ValueError:
            raise ValueError(
                f"`weights` {text!r}: the seed after 'random:' must be an integer, e.g. 'random:0'."
            ) from None
    if text == "default":
        return "default", None
    return str(Path(text).resolve()), None


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long for the system: the error would show it in full
        raise WeightsNotFoundError(
            f"`weights` file {_shown_path(path)}: no such file (the name is not one this system can open)."
        ) from None
    if not exists:
        raise WeightsNotFoundError(f"`weights` file {str(path)!r} does not exist.")
    check_regular_file(path, "`weights` file")
    expected = (
        "expected a state dict: a .safetensors file, or a file of tensors saved by "
        "`torch.save(model.state_dict(), PATH)` (read with weights_only=True)"
    )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the loaders' own messages can quote the file's bytes: not shown
        reader = "safetensors" if path.suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise ValueError(
            f"`weights` file {str(path)!r} is not a state dict ({reader} cannot read it); {expected}."
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        held = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict that is not name -> tensor"
        raise ValueError(f"`weights` file {str(path)!r} holds {held}, not a state dict; {expected}.")
    return state


def _shown_path(path: str | os.PathLike) -> str:
    """A file's path as a message shows it: its repr, the start cut when it is over 200 characters (the end names
    the file)."""
    text = os.fspath(path)
    return repr(text) if len(text) <= 200 else repr("..." + text[-150:])


def load_state_dict_into(model: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Loads the state-dict file ``path`` (safetensors, or tensors read with ``weights_only=True``) into ``model``
    (the target ``name``), strictly: what a :class:`TargetLoader` does with a weight file.

    Raises:
        WeightsMismatchError: naming ``--weights``, the file, and how many keys are missing, unexpected and of
            the wrong shape, with up to 3 of each (instead of ``load_state_dict``'s dump of every key).
    """
    state = _load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:

        def some(keys, show=_shown):
            return ", ".join(show(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")

        parts = [
            f"{len(missing)} missing (e.g. {some(missing)})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {some(unexpected)})" if unexpected else "",
            f"{len(wrong)} of the wrong shape (e.g. "
            + some(
                wrong, lambda k: f"{_shown(k)}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} expected"
            )
            + ")"
            if wrong
            else "",
        ]
        raise WeightsMismatchError(
            f"`--weights` {_shown_path(path)} is not a state dict of {name!r}: of its {len(state)} keys, "
            f"{'; '.join(p for p in parts if p)} (the network has {len(own)}); expected a file written by "
            f"torch.save(model.state_dict()) for this target."
        )
    model.load_state_dict(state)
