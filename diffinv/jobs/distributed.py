"""Scale-out with accelerate: which process does which work item, and where it runs.

A job launched with ``accelerate launch`` or ``torchrun`` calls :func:`process_state` once: accelerate's
``PartialState``, over gloo on CPU-only machines and NCCL on GPUs. Work items are taken by whichever
process is free (the job protocol's runner); each process writes its records to its own shard of the run
store, and the main process merges the outputs. :func:`launch_local` starts such a job on one machine
from inside a command (``--workers N``), each process with its share of the CPU cores.

Example:
    >>> state = process_state()
    >>> run_job(job, store, items, state=state)  # diffinv.jobs.items
    >>> state.wait_for_everyone()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from accelerate import PartialState

__all__ = [
    "available_cores",
    "is_distributed_launch",
    "launch_local",
    "launch_state",
    "local_workers",
    "process_device",
    "process_state",
]


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


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_workers(workers: int | str, device: torch.device, items: int, *, force: bool = False) -> int:
    """The number of local processes for ``--workers``: ``"auto"`` is one per CPU core (at most one
    per work item) on CPU and 1 on a GPU; 1 under ``torchrun``/``accelerate launch`` (already split).

    Raises:
        ValueError: more processes than GPUs on CUDA, or than the CPU cores this process may use on CPU
            (more only share the cores, each with its own memory) unless ``force`` (``--force-workers``).
    """
    if is_distributed_launch():
        return 1
    if workers == "auto":
        return max(1, min(available_cores(), items)) if device.type == "cpu" else 1
    gpus = torch.cuda.device_count() if device.type == "cuda" else None
    if gpus is not None and workers > gpus:
        raise ValueError(
            f"`--workers` {workers} on {device}: each process needs a GPU of its own and this machine "
            f"has {gpus}; use --workers {gpus} or fewer (or --device cpu)."
        )
    cores = available_cores()
    if gpus is None and workers > cores and not force:
        raise ValueError(
            f"`--workers` {workers}: this process may use {cores} CPU core{'s' if cores > 1 else ''}, "
            f"and more processes only share them, each with its own memory; use --workers {cores} or "
            f"fewer, or pass --force-workers to run more processes than cores."
        )
    return int(workers)


def launch_local(argv: Sequence[str], processes: int) -> int:
    """Runs ``python -m diffinv ARGV`` as ``processes`` processes on this machine (torchrun's launcher,
    a local rendezvous, gloo on CPU), each with ``cores // processes`` threads unless
    ``OMP_NUM_THREADS`` is set; returns the first failed process's exit code, or 0.

    Raises:
        KeyboardInterrupt: the launch was interrupted (the processes are stopped; what they finished is kept).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // processes)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a failed process says why itself
    config = get_args_parser().parse_args(
        ["--standalone", "--nproc_per_node", str(processes), "--module", "diffinv", *argv]
    )
    try:
        run(config)
    except ChildFailedError as err:
        codes = [failure.exitcode for failure in err.failures.values()]
        return next((code for code in codes if code and code > 0), 1)
    except SignalException as err:
        raise KeyboardInterrupt from err
    return 0


def launch_state(device: torch.device) -> tuple[PartialState | None, torch.device]:
    """``(state, device)`` for a job: under ``torchrun``/``accelerate launch`` accelerate's process state and
    this process's own device (:func:`process_device`); otherwise ``(None, device)``."""
    if not is_distributed_launch():
        return None, device
    state = process_state()
    return state, process_device(state, device)
