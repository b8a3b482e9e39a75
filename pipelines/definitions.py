"""Diffusion model files: the weight-free definitions in ``pipelines/`` and checks of model folders.

``tiny``, ``sd15`` and ``sd-turbo`` are diffusers-format definitions without weights
(model_index.json + component configs) from which random-weight pipelines of the real size
are built offline; :func:`check_model_dir` tells a real model folder from an empty one, and
:func:`load_tokenizer` builds the real CLIP vocabulary from ``open_clip_torch``'s BPE file
when a folder has none.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = [
    "DEFINITIONS",
    "HOW_TO_PROVIDE",
    "ModelFilesNotFoundError",
    "check_model_dir",
    "definition_dir",
    "is_local_path",
    "load_tokenizer",
    "read_json",
]

DEFINITIONS = ("tiny", "sd15", "sd-turbo")
_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")
HOW_TO_PROVIDE = (
    "Offline, provide a diffusers-format Stable Diffusion directory (model_index.json, unet/, vae/, "
    "text_encoder/, tokenizer/, scheduler/ with their weights): on a machine with internet run "
    "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR` (or "
    "stabilityai/sd-turbo), copy DIR here and pass its path; or pre-fill the Hugging Face cache (HF_HOME). "
    "For speed/memory measurements without weights use `load_pipeline('sd15')` (random weights built from "
    "pipelines/sd15)."
)


class ModelFilesNotFoundError(FileNotFoundError):
    """The diffusion model's files are not on this machine (and cannot be downloaded here)."""


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a model argument names a local path (it exists, starts with ``/``, ``.`` or ``~``, or has
    more than one ``/``) rather than a Hugging Face Hub id (``org/name``)."""
    text = os.fspath(name_or_path)
    return os.path.exists(text) or text.startswith(("/", ".", "~")) or text.count("/") > 1


def definition_dir(name_or_path: str | os.PathLike) -> Path:
    """The folder of a pipeline definition: a name in :data:`DEFINITIONS` or a directory."""
    path = Path(name_or_path)
    if (path / "model_index.json").is_file():
        return path
    if str(name_or_path) in DEFINITIONS:
        return Path(__file__).parent / str(name_or_path)
    raise ModelFilesNotFoundError(
        f"pipeline definition {str(name_or_path)!r} not found: expected one of {', '.join(DEFINITIONS)} or a "
        f"directory with model_index.json and component configs."
    )


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_model_dir(path: str) -> None:
    """Raises :class:`ModelFilesNotFoundError` unless ``path`` holds a loadable diffusers pipeline."""
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise ModelFilesNotFoundError(
            f"`pretrained_model_name_or_path` {path!r} has no model_index.json, so it is not a diffusers-format "
            f"pipeline directory. " + HOW_TO_PROVIDE
        )
    index = read_json(folder / "model_index.json")
    for name in _WEIGHT_COMPONENTS:
        entry = index.get(name)
        if not entry or entry[0] is None:
            continue
        files = [
            p for p in (folder / name).glob("*") if p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json")
        ]
        if not files:
            raise ModelFilesNotFoundError(
                f"`pretrained_model_name_or_path` {path!r}: the component {name!r} has no weights in {folder / name} "
                f"(a definition without weights?). " + HOW_TO_PROVIDE
            )


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIPTokenizer from a tokenizer folder, or built from open_clip's CLIP BPE file."""
    from transformers import CLIPTokenizer  # here, so that the definitions import without transformers

    if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    try:
        from open_clip.tokenizer import bytes_to_unicode, default_bpe
    except ImportError as err:
        raise ImportError(
            f"{folder} has no vocabulary; the real CLIP vocabulary is built from the BPE file of `open_clip_torch`: "
            f"`pip install open_clip_torch` (or provide vocab.json and merges.txt there)."
        ) from err
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]  # exactly as CLIP's own tokenizer
    merges = [tuple(m.split()) for m in merges]
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    config = read_json(folder / "tokenizer_config.json")
    special = {
        k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if isinstance(config.get(k), str)
    }
    return CLIPTokenizer(
        vocab={s: i for i, s in enumerate(symbols)},
        merges=merges,
        model_max_length=config.get("model_max_length", 77),
        **special,
    )
