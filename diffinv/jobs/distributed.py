"""Scale-out with accelerate: which process does which work item, and where it runs.

A job launched with ``accelerate launch`` or ``torchrun`` (several processes, GPUs or
machines) calls :func:`process_state` once: accelerate's ``PartialState``, formed over gloo on
CPU-only machines (``cpu=True``, which accelerate needs to form the group there) and over NCCL
on GPUs. Work items are split round-robin by :func:`shard`; each process writes its finished
records into the run store (its own shard, see :class:`~diffinv.jobs.store.RunStore`), and the
main process merges the outputs at the end. A plain single-process command is unchanged.

Example:
    >>> state = process_state()
    >>> for item in shard(todo, state): ...
    >>> state.wait_for_everyone()
    >>> if state.is_main_process: write_tables()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
from accelerate import PartialState

__all__ = ["is_distributed_launch", "launch_state", "process_device", "process_state", "shard"]

T = TypeVar("T")


def is_distributed_launch() -> bool:
    """Whether this process was started by ``torchrun``/``accelerate launch`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state() -> PartialState:
    """This process's accelerate state (one process when not launched distributed)."""
    return PartialState(cpu=not torch.cuda.is_available())


def process_device(state: PartialState, requested: torch.device) -> torch.device:
    """The device a process runs on: its own GPU under a multi-GPU launch, else ``requested``."""
    if state.num_processes > 1 and requested.type == "cuda":
        return state.device
    return requested


def shard(items: Sequence[T], state: PartialState) -> list[T]:
    """This process's share of ``items``: every ``num_processes``-th, starting at its index."""
    return list(items[state.process_index :: state.num_processes])


def launch_state(device: torch.device) -> tuple[PartialState | None, torch.device]:
    """``(state, device)`` for a job: under ``torchrun``/``accelerate launch`` accelerate's process state and
    this process's own device (:func:`process_device`); otherwise ``(None, device)``."""
    if not is_distributed_launch():
        return None, device
    state = process_state()
    return state, process_device(state, device)
