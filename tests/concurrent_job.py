"""A small atlas or audit with decoders, run as an independent process on a shared run folder
(``python concurrent_job.py atlas|audit OUT IMAGES GO``): it imports everything, says it is ready
(``OUT.ready.PID``), waits for the file ``GO`` so that two such processes start the job together, then runs
it, printing ``trained FOLDER`` for every model this process trains, and ``done``."""

import os
import sys
import time
from pathlib import Path

import torch

from diffinv.defenses import parse_defenses
from diffinv.inverters import PixelInverter
from diffinv.io import collect_images, load_images
from diffinv.jobs import atlas
from diffinv.jobs.atlas import run_atlas, split_images
from diffinv.jobs.audit import run_audit, trainings
from diffinv.jobs.training import TrainConfig, train
from diffinv.targets import TargetNetwork

LAYERS = ["blocks.0", "blocks.1", "blocks.2"]


def _train_and_say(config):
    print(f"trained {Path(config.out).relative_to(OUT).as_posix()}", flush=True)
    return train(config)


OUT = Path(".")


def main(job: str, out: str, images: str, go: str) -> None:
    global OUT
    OUT = Path(out).resolve()
    atlas.train = trainings.train = _train_and_say  # the jobs' one entry to training, watched
    torch.set_num_threads(1)
    target = TargetNetwork.from_name("tf_efficientnet_lite0", LAYERS, weights="random:0", input_size=(32, 32))
    template = TrainConfig(
        out="",
        layer="",
        max_steps=12,
        batch_size=4,
        hidden_channels=8,
        min_channels=8,
        mixed_precision="no",
        device="cpu",
        val_fraction=0.0,
        warmup_steps=1,
        progress=False,
    )
    pixel = {"pixel": lambda t: PixelInverter(t, iterations=2)}
    files = collect_images([images])
    Path(f"{out}.ready.{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if job == "atlas":
        run_atlas(
            target,
            split_images(files, 3, seed=0),
            LAYERS,
            {**pixel, "decoder": template},
            out,
            size=32,
            batch_size=2,
            progress=False,
        )
    else:
        run_audit(
            target,
            load_images(files[:2], 32),
            [f.name for f in files[:2]],
            LAYERS,
            parse_defenses(["none", "noise:0.5"]),
            {**pixel, "decoder": TrainConfig(**{**template.__dict__, "images": [str(f) for f in files[2:]]})},
            out,
            batch_size=1,
            progress=False,
        )
    print("done")


if __name__ == "__main__":
    main(*sys.argv[1:5])
