"""The training loop: one run of a task (:mod:`~diffinv.jobs.training.tasks`) into its run store, with accelerate.

Numbered steps: 1. check the inputs, 2. the accelerator, 3. data, target and task, 4. the run store (the
same settings resume from the latest checkpoint, others are refused), 5. model, optimizer and resumed state,
6. the loop (validation, checkpoints, the model, ``training_log.json`` and ``loss_curve.png``).

Data-parallel (``accelerate launch`` / ``torchrun``): ``batch_size`` is the *global* batch, divisible by the
number of processes; every process holds the same seeded crop generator and builds only its slice of each
global batch, so a run's results do not depend on the number of processes, and a run resumes with any number.
A step is skipped on every process when the global batch's loss is not finite; only the main process writes
and validates.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...datasets import ImageDataset
from ...defenses import parse_defense
from ...defenses.training import TrainedState
from ...io import write_json
from ...losses import mse
from ...metrics import psnr, ssim
from ...targets import TargetNetwork
from ..checkpoints import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint, save_model
from ..report import plot_loss_curve
from ..store import RunStore
from .config import TrainConfig, TrainResult, load_training_data
from .memory import check_training_memory
from .precision import allow_precision, resolved_device, resolved_precision
from .settings import run_settings
from .tasks import DecoderTask, MapperTask, task_of

__all__ = ["train", "train_decoder", "train_mapper"]


def _outputs() -> tuple[str, ...]:
    """What a training run writes into its folder besides the manifest (``overwrite`` removes them)."""
    from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    return CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, "training_log.json", "loss_curve.png", "checkpoints", ".model.tmp"


@dataclass
class _Run:
    """What steps 1-4 of a run set up, and every later step reads."""

    config: TrainConfig
    accelerator: Any
    local: slice  # this process's slice of the global batch
    train_set: ImageDataset
    val_set: ImageDataset | None
    val_images: torch.Tensor | None
    target: TargetNetwork  # a learned defense's client
    task: Any
    defense: Any  # None, a fixed Defense, or a learned setting's Deployment

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _checked(config: TrainConfig, task_cls) -> TrainConfig:
    """1. Check inputs (on a copy: the caller's config is never changed)."""
    config = dataclasses.replace(config, kind=task_cls.kind)
    if config.max_steps < 1 or config.batch_size < 1:
        raise ValueError(
            f"`max_steps` and `batch_size` must be positive, got {config.max_steps} and {config.batch_size}."
        )
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out` {str(out)!r} is an existing file; expected an output folder.")
    resolved_precision(config.mixed_precision, resolved_device(config.device))
    if config.defense is not None:
        learned = parse_defense(config.defense).learned
        if learned != (config.defense_state is not None):
            raise ValueError(
                f"`defense` {config.defense!r} is "
                + (
                    "learned: `defense_state` must name the folder of its trained state."
                    if learned
                    else "fixed: leave `defense_state` out."
                )
            )
        if learned and not TrainedState.exists(config.defense_state):
            raise FileNotFoundError(f"`defense_state` {config.defense_state!r} holds no trained defense.")
    elif config.defense_state is not None:
        raise ValueError("`defense_state` is given without `defense`; give the learned setting it was trained for.")
    check_training_memory(config)
    return config


def _accelerator(config: TrainConfig):
    """2. The accelerator (one process, or one of a distributed launch), and this process's slice of the global
    batch (split evenly)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    device = resolved_device(config.device)
    mixed_precision = resolved_precision(config.mixed_precision, device)
    if device.type == "cuda" and device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(device)  # accelerate uses the current GPU of a single process
    # split_batches: the batch is the global one, so the LR schedule advances one step per optimizer
    # step whatever the number of processes (accelerate otherwise steps it once per process)
    allow_precision(mixed_precision)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    processes, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % processes:
        raise ValueError(
            f"`batch_size` {config.batch_size} is the global batch (crops per step summed over the "
            f"processes) and must be divisible by the number of processes, {processes}; choose e.g. "
            f"{processes * max(1, round(config.batch_size / processes))}."
        )
    return accelerator, slice(rank * config.batch_size // processes, (rank + 1) * config.batch_size // processes)


def _start(config: TrainConfig, task_cls) -> _Run:
    """Steps 1-4: the checked config, the accelerator, data, target and task, and the run store."""
    from accelerate.utils import set_seed

    # 1. Check inputs; 2. Accelerator
    config = _checked(config, task_cls)
    defense = parse_defense(config.defense) if config.defense is not None else None
    accelerator, local = _accelerator(config)
    device = accelerator.device

    # 3. Data (before the run store: a source that fails to load leaves no run behind), target, task
    train_set, val_set = load_training_data(config)
    set_seed(config.seed)
    target = TargetNetwork.from_name(
        config.target, config.layer, weights=config.weights, input_size=(config.size, config.size)
    ).to(device)
    if defense is not None and defense.learned:  # the features of the deployment: its client, its transform
        defense = defense.deployment(target, config.layer, TrainedState.load(config.defense_state))
        target = defense.target
    task = task_cls(config, target, device)
    val_images = val_set.fixed(config.size) if val_set is not None else None

    # 4. Run store: the same settings resume from the latest checkpoint, other settings are refused
    #    (every process checks the folder, the main one writes the manifest, the others wait for it)
    RunStore(
        Path(config.out),
        f"train-{task.kind}",
        run_settings(config, task, target, accelerator, train_set, val_set),
        overwrite=config.overwrite,
        outputs=_outputs(),
        state=accelerator.state,
    )
    accelerator.wait_for_everyone()
    return _Run(config, accelerator, local, train_set, val_set, val_images, target, task, defense)


def _prepared_model(run: _Run):
    """5. Model, feature statistics, optimizer, LR schedule and the resumed state (from the latest checkpoint)."""
    from diffusers.optimization import get_scheduler

    config, accelerator, target, defense = run.config, run.accelerator, run.target, run.defense
    device = accelerator.device
    model = run.task.build().train()
    stats_generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        sample = torch.cat(
            [
                target.feature(
                    run.train_set.random_crops(
                        config.batch_size, config.size, stats_generator, min_scale=config.min_crop
                    ).to(device),
                    config.layer,
                )
                for _ in range(max(1, 64 // config.batch_size))
            ]
        )
        if defense:
            sample = defense(sample, stats_generator)
    model.set_feature_stats(sample.cpu())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=min(config.warmup_steps, config.max_steps),
        num_training_steps=config.max_steps,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state = TrainerState(config.seed)  # the same crop generator in every process: each builds its slice
    checkpoint = latest_checkpoint(Path(config.out))
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, state, model, optimizer, lr_scheduler)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    return model, optimizer, lr_scheduler, state


def _step(run: _Run, parts, state: TrainerState) -> None:
    """One optimizer step of the global batch (skipped on every process when its loss is not finite)."""
    config, accelerator = run.config, run.accelerator
    model, optimizer, lr_scheduler = parts
    tic = time.perf_counter()
    images = run.train_set.random_crops(
        config.batch_size, config.size, state.generator, min_scale=config.min_crop, keep=run.local
    ).to(accelerator.device)
    with torch.no_grad():
        feats = run.target.feature(images, config.layer).float()
        if run.defense:
            feats = run.defense(feats, state.generator)
    with accelerator.autocast():
        loss, _ = run.task.loss(model, images, feats)
    # the loss of the global batch (equal slices: the mean of the per-process means), the same
    # in every process, so that all of them skip a non-finite step together
    global_loss = accelerator.reduce(loss.detach().float().reshape(1), reduction="mean")[0]
    if torch.isfinite(global_loss):
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
    else:
        state.skipped += 1
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.losses.append(float(global_loss))
    state.images += config.batch_size
    state.seconds += time.perf_counter() - tic


@torch.no_grad()
def _validate(run: _Run, model) -> dict:
    """PSNR, SSIM and MSE of the reconstructions of the validation images (the same defended features every
    time); ``model`` is the unwrapped one (no collective call: the other processes go on to the next step)."""
    config, device = run.config, run.accelerator.device
    model.eval()
    recon = []
    generator = torch.Generator().manual_seed(0)  # the same defended validation features every time
    for chunk in run.val_images.split(config.batch_size):
        chunk = chunk.to(device)
        feats = run.target.feature(chunk, config.layer)
        if run.defense:
            feats = run.defense(feats, generator)
        recon.append(run.task.reconstruct(model, feats).cpu())
    model.train()
    recon = torch.cat(recon)
    images = run.val_images
    return {
        "psnr": float(psnr(recon, images).mean()),
        "ssim": float(ssim(recon, images).mean()),
        "mse": float(mse(recon, images).mean()),
    }


def _log(config: TrainConfig, state: TrainerState, train_set, val_set, start_step: int) -> dict:
    return {
        "config": asdict(config),
        "step": state.step,
        "resumed_from": start_step or None,
        "train_items": len(train_set),
        "val_items": [] if val_set is None else val_set.names,
        "skipped_steps": state.skipped,
        "train_seconds": state.seconds,
        "images_per_second": state.images / state.seconds if state.seconds else 0.0,
        "losses": state.losses,
        "validation": state.validation,
        "torch_threads": torch.get_num_threads(),
    }


def _finish_interval(run: _Run, model, state: TrainerState, start_step: int) -> None:
    """The main process writes the model, ``training_log.json`` and ``loss_curve.png``."""
    config, accelerator, out = run.config, run.accelerator, run.out
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        save_model(unwrapped, out)
        write_json(out / "training_log.json", _log(config, state, run.train_set, run.val_set, start_step))
        plot_loss_curve(
            state.losses,
            state.validation,
            out / "loss_curve.png",
            f"{run.task.kind} {config.target}.{config.layer} @ {config.size}px",
        )


def _loop(run: _Run, parts, state: TrainerState, start_step: int) -> None:
    """6. Loop: steps to ``max_steps``, validating every ``val_every`` and checkpointing every
    ``checkpoint_every`` steps (and at the end)."""
    config, accelerator = run.config, run.accelerator
    model, optimizer, lr_scheduler = parts
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        desc=f"train-{run.task.kind} {config.layer}",
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    while state.step < config.max_steps:
        _step(run, parts, state)
        bar.update(1)
        postfix = {"loss": f"{state.losses[-1]:.4g}"}
        if (
            run.val_images is not None
            and accelerator.is_main_process
            and (state.step % config.val_every == 0 or state.step == config.max_steps)
        ):
            scores = _validate(run, accelerator.unwrap_model(model))
            state.validation.append({"step": state.step, **scores})
            postfix["val_psnr"] = f"{scores['psnr']:.2f}"
        bar.set_postfix(postfix)
        if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
            save_checkpoint(accelerator, run.out, state, model, optimizer, lr_scheduler, config.keep_checkpoints)
            _finish_interval(run, model, state, start_step)
    bar.close()


def _train(config: TrainConfig, task_cls) -> TrainResult:
    # 1.-4. Check inputs, accelerator, data, target, task, run store
    run = _start(config, task_cls)
    # 5. Model, optimizer, resumed state
    model, optimizer, lr_scheduler, state = _prepared_model(run)
    start_step = state.step
    # 6. Loop
    _loop(run, (model, optimizer, lr_scheduler), state, start_step)
    if start_step >= run.config.max_steps:  # nothing left to train: still leave a model and a log
        _finish_interval(run, model, state, start_step)
    log = _log(run.config, state, run.train_set, run.val_set, start_step)
    final_val = state.validation[-1] if state.validation else {}
    return TrainResult(
        out=run.out,
        step=state.step,
        val_psnr=final_val.get("psnr"),
        val_ssim=final_val.get("ssim"),
        seconds=state.seconds,
        images_per_second=log["images_per_second"],
        log=log,
        main_process=run.accelerator.is_main_process,
    )


def train(config: TrainConfig) -> TrainResult:
    """Trains the model of ``config.kind`` (:data:`TRAINED_KINDS`) for ``config.layer``; see :class:`TrainConfig`."""
    return _train(config, task_of(config.kind))


def train_decoder(config: TrainConfig) -> TrainResult:
    """Trains an :class:`~diffinv.models.UpconvNet` for ``config.layer``; see :class:`TrainConfig`."""
    return _train(config, DecoderTask)


def train_mapper(config: TrainConfig) -> TrainResult:
    """Trains a :class:`~diffinv.models.FeatureMapper` for ``config.layer`` into ``config.model``'s latent space."""
    return _train(config, MapperTask)
