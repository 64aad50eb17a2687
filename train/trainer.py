"""The training loop of `genrep-train`: resolve the config, (re)start, step, log, checkpoint.

Every rank runs exactly `total_steps` steps (the data streams never run dry), so uneven shards
cannot leave a rank waiting in a collective. A run folder holds everything a run makes; rerunning
the same command continues from its `checkpoint.pt` (model, optimizer, schedule, RNG and the data
position, which follows from the step).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from genrep.config import read_yaml, save_config
from genrep.encoders import backbone_state, build_backbone, normalize
from genrep.errors import DataError, OutputError, UserError
from genrep.io import TMP_SUFFIX, atomic_torch_save, atomic_write_bytes, remove_stale_tmp
from genrep.manifest import MANIFEST
from genrep.options import SlowJobWarning, autocast_dtype, resolve_device
from genrep.runs import (
    BACKBONE,
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CONFIG,
    LOG,
    TENSORBOARD,
    load_checkpoint,
)
from genrep.train.checkpoint import rng_state, set_rng_state
from genrep.train.config import TrainConfig
from genrep.train.data import (
    DatasetInfo,
    TrainingStream,
    ViewSpec,
    check_stream_sizes,
    open_data,
    sample_seed,
)
from genrep.train.model import TrainModel
from genrep.train.objectives import OBJECTIVES
from genrep.train.online import (
    GeneratorStream,
    check_online_flags,
    generator_device,
    open_generator,
)
from genrep.train.tx import BatchedTx, build_recipe

#: the cosine schedule ends at this fraction of the peak lr (eta_min of the released code)
FINAL_LR_FRACTION = 1e-3

StepHook = Callable[[int, dict[str, Any]], None]


@dataclass
class Distributed:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    #: a CPU (gloo) process group for the per-step check that every rank still has data
    control: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Rank and device from torchrun's environment; joins the process group when launched by
    torchrun (even with one process: `torchrun --nproc-per-node 1` runs DDP over nccl or gloo)
    or when the environment names more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if world > 1 else None
    return Distributed(rank, world, local_rank, target, control)


def next_batch(batches: Iterator[dict[str, Any]], env: Distributed) -> dict[str, Any]:
    """This rank's next batch. Under DDP a rank whose data fails (a `UserError`: no usable sample
    left, `--strict`) stops every rank with it: the others would otherwise wait forever in the
    gradient all-reduce. The check is one int all-reduced on the CPU group, which does not wait
    for the GPU."""
    problem: UserError | None = None
    try:
        batch = next(batches)
    except UserError as err:
        problem = err
    if env.world > 1:
        stopped = torch.tensor([problem is not None], dtype=torch.int32)
        dist.all_reduce(stopped, dist.ReduceOp.MAX, group=env.control)
        if stopped.item():
            reports: list[str | None] = [None] * env.world
            mine = str(problem) if problem is not None else None
            dist.all_gather_object(reports, mine, group=env.control)
            if problem is None:
                rank, message = next((r, m) for r, m in enumerate(reports) if m)
                raise DataError(f"rank {rank} stopped: {message}")
    if problem is not None:
        raise problem
    return batch


class CosineSchedule:
    """Linear warmup, then cosine decay from the peak lr to FINAL_LR_FRACTION of it."""

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 0) -> None:
        self.peak_lr, self.total_steps, self.warmup_steps = peak_lr, total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        final = self.peak_lr * FINAL_LR_FRACTION
        return final + (self.peak_lr - final) * (1 + math.cos(math.pi * min(1.0, progress))) / 2

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "cosine",
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr_fraction": FINAL_LR_FRACTION,
        }


class RunLog:
    """JSONL and TensorBoard scalars of rank 0; a resumed run drops records past its checkpoint."""

    def __init__(self, out: Path, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / LOG
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= start_step:
                    kept.append(line + "\n")
            atomic_write_bytes(self.path, "".join(kept).encode())
        self.writer = SummaryWriter(
            str(out / TENSORBOARD), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        for key, value in values.items():
            if self.writer is not None:
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _checkpoint(
    path: Path,
    model: TrainModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: CosineSchedule,
    config: TrainConfig,
    step: int,
    skipped: int,
) -> None:
    backbone = backbone_state(model.backbone)
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "epoch": step / config.steps_per_epoch,
            "config": config.to_plain(),
            "manifest_hash": config.manifest_hash,
            "backbone": backbone,
            "objective": {k: v.detach().cpu() for k, v in model.objective.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": rng_state(),
            "skipped_samples": skipped,
        },
        path / CHECKPOINT,
    )
    atomic_torch_save(backbone, path / BACKBONE)


def _is_train_config(path: Path) -> bool:
    """Whether `path` is the config.yaml of a genrep-train run (a dataset folder has one too)."""
    try:
        config = read_yaml(path, OutputError)  # within bounds: a FIFO there never blocks
    except OutputError:
        return False
    return isinstance(config, dict) and {"objective", "arch", "lr_scaled"} <= config.keys()


def check_out(out: Path) -> None:
    """Refuse an --out that is not this command's to write: a file, a dataset folder, or a
    folder holding anything but a genrep-train run."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; pass a folder for the run")
    if not out.exists():
        return
    if (out / MANIFEST).exists():
        raise OutputError(
            f"--out {out} is a dataset folder (it holds {MANIFEST}); pass another --out"
        )
    if (out / CHECKPOINT).is_file() or _is_train_config(out / CONFIG):
        return
    if any(not entry.name.endswith(TMP_SUFFIX) for entry in out.iterdir()):
        raise OutputError(
            f"--out {out} holds files and is not a genrep-train run folder (no {CONFIG} or "
            f"{CHECKPOINT} of a run); pass a new or empty folder"
        )


def _resume(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run folder's checkpoint if it belongs to this command; refuses a different run."""
    check_out(out)
    if not (out / CHECKPOINT).exists():
        return None
    checkpoint = load_checkpoint(out / CHECKPOINT)
    changes = config.changes_from(checkpoint["config"])
    if changes:
        raise OutputError(
            f"{out} holds a run with other settings ({'; '.join(changes)}); rerun "
            "with its settings to resume it, or pass another --out"
        )
    return checkpoint


def _check_same_start(start: int, out: Path, device: torch.device) -> None:
    """Every rank must resume from the same checkpoint, or their steps and optimizers diverge."""
    low = torch.tensor(start, device=device)
    high = low.clone()
    dist.all_reduce(low, dist.ReduceOp.MIN)
    dist.all_reduce(high, dist.ReduceOp.MAX)
    if low != high:
        raise OutputError(
            f"the ranks see different checkpoints in {out} (steps {int(low)} to "
            f"{int(high)}): put --out on a filesystem that every node shares"
        )


def _mean_across_ranks(
    values: dict[str, torch.Tensor], device: torch.device, distributed: bool
) -> dict[str, float]:
    names = sorted(values)
    stacked = torch.stack([values[name].float().to(device) for name in names])
    if distributed:
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))


def train(
    config: TrainConfig, hooks: Sequence[StepHook] = (), log: Callable[[str], None] = print
) -> Path:
    """Train as `config` (the CLI's flags) says; returns the run folder."""
    env = setup_distributed(config.device)
    distributed = dist.is_initialized()
    try:
        return _train(config, env, distributed, hooks, log if env.main else (lambda _m: None))
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    requested: TrainConfig,
    env: Distributed,
    distributed: bool,
    hooks: Sequence[StepHook],
    log: Callable[[str], None],
) -> Path:
    check_online_flags(requested)
    if requested.generator:
        info = open_generator(requested, env.device, log)
    else:
        info = open_data(
            requested.shards, requested.real, requested.real_fraction, requested.verify
        )
    config = requested.resolve(info, env.world, env.device)
    workers = check_stream_sizes(info, env.world, config.workers, config.batch_size)
    if workers < config.workers:
        log(f"note: {info.name} is small; using {workers} DataLoader workers per rank")
    out = Path(config.out)
    checkpoint = _resume(out, config)
    start = int(checkpoint["step"]) if checkpoint else 0
    if distributed:
        _check_same_start(start, out, env.device)
    total = config.steps
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out)
        save_config(out / CONFIG, config.to_plain())
    if checkpoint and start >= total:
        if env.main and not (out / BACKBONE).exists():
            atomic_torch_save(checkpoint["backbone"], out / BACKBONE)
        log(f"{out} is already trained ({start} steps); nothing to do")
        return out

    model = _build_model(config, info, env.device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr_scaled,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    # fp16 needs its gradients scaled (they underflow otherwise); bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(env.device.type, enabled=config.precision == "fp16")
    schedule = CosineSchedule(config.lr_scaled, total, config.warmup_steps)
    skipped_total = 0
    if checkpoint:
        model.backbone.load_state_dict(checkpoint["backbone"])
        model.objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler.is_enabled() and checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
        set_rng_state(checkpoint["rng"])
        skipped_total = int(checkpoint.get("skipped_samples", 0))
        log(f"resuming {out} at step {start}/{total}")
    cuda = env.device.type == "cuda"
    wrapped = (
        DistributedDataParallel(model, device_ids=[env.device] if cuda else None)
        if distributed
        else model
    )
    loader = _loader(config, info, env, start, workers)
    device_tx: BatchedTx | None = None
    if config.tx_on == "device":
        device_tx = build_recipe(config.tx).batched(config.input_size)

    dtype = autocast_dtype(config.precision)
    autocast = partial(torch.autocast, env.device.type, dtype=dtype) if dtype else nullcontext
    run_log = RunLog(out, start, env.main)
    views = config.views
    images_per_step = config.batch_size * views
    bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not (env.main and config.progress),
    )
    pending: dict[str, list[torch.Tensor]] = {}
    skipped_recent = torch.zeros((), dtype=torch.long)
    window_start, window_steps = time.perf_counter(), 0
    # Steps left x the step time after a few steps (worker start-up and cudnn autotuning excluded).
    slow = SlowJobWarning(
        env.device, total - start, f"training {total - start} steps", skip=2, measure=3
    )
    model.train()
    batches = iter(loader)
    try:
        for step in range(start, total):
            batch = next_batch(batches, env)
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch["images"].to(env.device, non_blocking=True).flatten(0, 1)
            if device_tx is not None:
                images = device_tx(images, device_tx_generator(config, env, step))
            images = normalize(images)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            targets: dict[str, Any] = {"views": views}
            for key in ("label", "latents"):
                if key in batch:
                    targets[key] = batch[key].to(env.device, non_blocking=True)
            with autocast():
                loss, metrics = wrapped(images, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = step + 1
            for name, value in {"loss": loss.detach(), **metrics}.items():
                pending.setdefault(name, []).append(value)
            skipped_recent += batch["skipped"].sum()
            window_steps += 1
            bar.update(1)
            slow.update(done - start)
            for hook in hooks:
                hook(done, batch)
            if done % config.log_every == 0 or done == total:
                values = _mean_across_ranks(
                    {name: torch.stack(v).mean() for name, v in pending.items()},
                    env.device,
                    distributed,
                )
                skipped = skipped_recent.to(env.device)
                if distributed:
                    dist.all_reduce(skipped)
                skipped_total += int(skipped)
                if not math.isfinite(values["loss"]):
                    raise UserError(
                        f"the loss is {values['loss']} at step {done}: lower --lr "
                        "(or add --warmup-steps) and rerun with another --out"
                    )
                elapsed = time.perf_counter() - window_start
                rate = images_per_step * window_steps / max(elapsed, 1e-9)
                values.update(
                    lr=lr,
                    epoch=done / config.steps_per_epoch,
                    images_per_s=rate,
                    skipped_samples=skipped_total,
                )
                run_log.write(done, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")
                pending.clear()
                skipped_recent.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if env.main and (done % config.checkpoint_every == 0 or done == total):
                _checkpoint(out, model, optimizer, scaler, schedule, config, done, skipped_total)
    finally:
        bar.close()
        run_log.close()
        del batches
    if skipped_total:
        log(
            f"skipped {skipped_total} bad samples (missing or undecodable views, damaged shards; "
            "--strict makes them an error)"
        )
    log(f"trained {total} steps; backbone: {out / BACKBONE}")
    if distributed:
        dist.barrier()
    return out


def _build_model(config: TrainConfig, info: DatasetInfo, device: torch.device) -> TrainModel:
    """Backbone + objective head, initialised alike on every rank (seeded)."""
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.arch)
    objective = OBJECTIVES.build(
        config.objective, backbone.feature_dim, info, **config.objective_options()
    )
    model = TrainModel(backbone, objective).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def device_tx_generator(config: TrainConfig, env: Distributed, step: int) -> torch.Generator:
    """The generator of `--tx-on device` at `step`: seeded by the step and rank, so a resumed run
    draws the Tx it would have drawn without the interruption."""
    generator = torch.Generator(env.device)
    return generator.manual_seed(sample_seed(config.seed, step, f"device-tx:{env.rank}"))


def _loader(
    config: TrainConfig, info: DatasetInfo, env: Distributed, start: int, workers: int
) -> DataLoader:
    """This rank's DataLoader, positioned at step `start`."""
    objective = OBJECTIVES.get(config.objective)
    recipe = build_recipe(config.tx)
    spec = ViewSpec(
        views=config.views,
        transform=recipe.view_transform(
            config.augment,
            config.input_size,
            info.image_size,
            info.center_crop,
            on_device=config.tx_on == "device",
        ),
        neighbors=info.neighbors,
        needs_latents=objective.needs_latents,
        needs_labels=objective.uses_labels(info),
        label_index={c: i for i, c in enumerate(info.classes)} if info.classes else None,
        strict=config.strict,
        seed=config.seed,
        real_transform=recipe.view_transform(
            config.augment, config.input_size, info.train_side, real=True
        ),
    )
    generating_on = generator_device(info)
    stream_type = TrainingStream if generating_on is None else GeneratorStream
    stream = stream_type(
        info, spec, env.rank, env.world, config.local_batch_size, start, config.shuffle_buffer
    )
    return DataLoader(
        stream,
        batch_size=config.local_batch_size,
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        # CUDA cannot be used in a forked process: workers that generate on it are spawned.
        multiprocessing_context="spawn"
        if workers and generating_on is not None and generating_on.type == "cuda"
        else None,
    )
