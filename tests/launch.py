"""Running ``diffinv`` as a user does, in subprocesses: alone, or as N processes under torchrun (gloo on CPU)."""

import os
import socket
import subprocess
import sys


def env() -> dict:
    """This environment, one OpenMP thread per process (deterministic numbers), offline, and no
    distributed variables inherited from a launcher."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(name, None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*argv: str, processes: int = 1) -> list[str]:
    """``python -m diffinv ARGV``, or the same under ``torchrun --nproc_per_node PROCESSES``."""
    launcher = (
        []
        if processes == 1
        else [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    )
    return [sys.executable, *launcher, "-m", "diffinv", *map(str, argv)]


def run_diffinv(*argv: str, processes: int = 1, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*argv, processes=processes), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
