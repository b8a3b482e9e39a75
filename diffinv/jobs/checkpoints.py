"""Checkpoints of a training run, in formats that never execute code when read.

A checkpoint is a folder ``OUT/checkpoints/checkpoint-NNNNNNN``: the model's weights
(``model.safetensors``), the optimizer's and scheduler's state dicts (``torch.save``, read back with
``torch.load(weights_only=True)``), the fp16 scaler's state (JSON), the crop generator's and each
process's random states (safetensors) and ``trainer_state.json`` (step, counters, history), written last
to mark it complete.

Nothing is unpickled on resume: a file that is not what it should be stops the resume with a
:class:`CheckpointError` that names it, and checkpoints of the older pickled format are refused the same
way. The folder is written under a temporary name and renamed when complete; the ``keep`` latest are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import write_json

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointError",
    "TrainerState",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_model",
]

CHECKPOINT_PREFIX = "checkpoint-"
FORMAT = 2  # 1: accelerate's save_state with a pickled trainer state (refused)
STATE_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint folder holds a file that is missing, damaged or of another format."""


@dataclass
class TrainerState:
    """Step, counters, history and the crop generator of a training run: the loop's own state."""

    seed: int = 0
    step: int = 0
    skipped: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "step": self.step,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "images": self.images,
            "losses": list(self.losses),
            "validation": list(self.validation),
        }


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The checkpoint folder with the highest step in ``out/checkpoints`` (complete ones only)."""
    folder = Path(out) / "checkpoints"
    found = [
        p
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit() and (p / STATE_FILE).is_file()
    ]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def _save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def save_checkpoint(accelerator, out: Path, state: TrainerState, model, optimizer, lr_scheduler, keep: int) -> Path:
    """Writes a checkpoint of the run (every process calls it) into a temporary folder, renamed when
    complete; keeps the ``keep`` latest."""
    from safetensors.torch import save_model as save_weights

    folder = out / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{state.step:07d}"
    tmp = folder / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _save_tensors(rng, tmp / f"random_states_{accelerator.process_index}.safetensors")
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            write_json(tmp / "scaler.json", accelerator.scaler.state_dict())
        _save_tensors({"crop_generator": state.generator.get_state()}, tmp / "generator.safetensors")
    accelerator.wait_for_everyone()  # every process has written its random states into tmp before it is renamed
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state.to_json())  # marks the checkpoint complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted((p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
        for old in complete[: max(0, len(complete) - max(1, keep))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fail(path: Path, expected: str, err: BaseException | str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file {str(path)!r} is not {expected} ({err}); it was not loaded (nothing in a run folder is "
        f"unpickled). Delete the folder {str(path.parent)!r} to resume from an earlier checkpoint, or start a "
        f"fresh run (--overwrite / overwrite=True)."
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise _fail(path, "a JSON file", err) from None


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise _fail(path, "a safetensors file", err) from None


def _read_weights_only(path: Path):
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text suggests weights_only=False: never here
        raise _fail(
            path, "a weights-only torch file (tensors, numbers, lists and dicts)", "it holds other objects"
        ) from None
    except Exception as err:  # a damaged zip, a truncated file, ...
        raise _fail(path, "a weights-only torch file (tensors, numbers, lists and dicts)", err) from None


def load_checkpoint(accelerator, folder: Path, state: TrainerState, model, optimizer, lr_scheduler) -> None:
    """Restores the run from ``folder`` (every process calls it).

    A checkpoint written by fewer processes has no random-state file for this process: it keeps its
    seeded state (the loop draws from the crop generator only).

    Raises:
        CheckpointError: a file is missing, damaged, not of its format, or the checkpoint was written
            by an older diffinv (with a pickled trainer state).
    """
    from safetensors.torch import load_model as load_weights

    saved = _read_json(folder / STATE_FILE)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        found = saved.get("format", 1) if isinstance(saved, dict) else saved
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has format {found!r}, expected {FORMAT}: it was written by an older diffinv "
            f"that stored its trainer state as a pickle, which is never loaded. Start a fresh run (--overwrite / "
            f"overwrite=True) or delete {str(folder.parent)!r}."
        )
    path = folder / "model.safetensors"
    try:
        load_weights(accelerator.unwrap_model(model), str(path))
    except Exception as err:
        raise _fail(path, "a safetensors file of this model's weights", err) from None
    for name, target in (("optimizer.pt", optimizer), ("scheduler.pt", lr_scheduler)):
        path = folder / name
        try:
            target.load_state_dict(_read_weights_only(path))
        except CheckpointError:
            raise
        except Exception as err:
            raise _fail(path, f"the {name[:-3]} state of this run", err) from None
    if accelerator.scaler is not None and (folder / "scaler.json").is_file():
        accelerator.scaler.load_state_dict(_read_json(folder / "scaler.json"))
    generator = _read_tensors(folder / "generator.safetensors")
    rng_file = folder / f"random_states_{accelerator.process_index}.safetensors"
    rng = _read_tensors(rng_file) if rng_file.is_file() else {}
    try:
        state.step, state.skipped = int(saved["step"]), int(saved["skipped"])
        state.seconds, state.images = float(saved["seconds"]), int(saved["images"])
        state.losses = [float(v) for v in saved["losses"]]
        state.validation = [dict(v) for v in saved["validation"]]
        state.generator.set_state(generator["crop_generator"])
        if "torch_cpu" in rng:
            torch.set_rng_state(rng["torch_cpu"])
        cuda = [rng[f"cuda_{i}"] for i in range(len(rng)) if f"cuda_{i}" in rng]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise _fail(folder / STATE_FILE, "a trainer state of this format", err) from None


def save_model(model, out: Path) -> None:
    """``save_pretrained`` into a temporary folder, then each file is renamed into ``out``."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for file in tmp.iterdir():
        os.replace(file, out / file.name)
    tmp.rmdir()
