"""Learning the steering walks of App. B (`genrep-steer`), so that `--view steer` can use them.

Following Jahanian et al. 2020 ("On the steerability of GANs") as GenRep does, one linear walk w_i
per pixel-space edit (shift x, shift y, zoom, 2D rotation, 3D rotation, and color with one walk per
channel) is trained jointly:

    min_w  E_{z, y, alpha} || G(z + sum_i c_i(alpha_i) w_i, y) - T(G(z, y), alpha) ||^2  (valid pixels)

where T composes every edit with its own random step size alpha_i and c_i maps it to the latent
step (`genrep.generate.walks`). Defaults are GenRep's (utils/biggan_steer_train.py): Adam, lr 1e-3,
batch 32, 160k samples, walks initialised N(0, 0.1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from genrep.config import save_config, to_plain
from genrep.errors import UsageError
from genrep.generate.edits import EDIT_NAMES, EDITS, UNITS, apply_edits, masked_mse
from genrep.generate.models.base import Generator
from genrep.generate.walks import (
    WALKS_FORMAT,
    WALKS_VERSION,
    cached_walks_path,
    check_ranges,
    config_path,
    draw_alphas,
    latent_steps,
    range_field,
    walk_names,
)
from genrep.io import atomic_torch_save, locked, remove_stale_tmp
from genrep.latents import sample_rng, truncated_normal
from genrep.options import PRECISIONS, SlowJobWarning, autocast_dtype, resolve_precision

CHECKPOINT_FORMAT = "genrep-walks-checkpoint"
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
#: learning-rate factor at step t of T; "cosine" anneals to 0, which quiets the walks' noise at the end
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, steps: 1.0,
    "cosine": lambda step, steps: 0.5 * (1 + math.cos(math.pi * step / steps)),
}
# sample_rng streams of the training batches and of the fixed evaluation batch
_TRAIN_STREAM, _EVAL_STREAM = 1, 2


def check_steerable(generator: Generator) -> None:
    """Refuse, in one line, a generator whose walks cannot be learned (`Generator.not_steerable`)."""
    if generator.not_steerable:
        raise UsageError(
            f"view 'steer' is not supported for model {generator.name!r}: "
            f"{generator.not_steerable}; use --view gaussian, independent or none"
        )


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SteerConfig:
    """What is learned and how; field names are those of the `genrep-steer` flags."""

    transforms: tuple[str, ...] = EDIT_NAMES
    shift_range: float = EDITS.get("shift_x").default_range
    zoom_range: float = EDITS.get("zoom").default_range
    rotate_2d_range: float = EDITS.get("rotate_2d").default_range
    rotate_3d_range: float = EDITS.get("rotate_3d").default_range
    color_range: float = EDITS.get("color").default_range
    num_samples: int = 160_000
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"
    optimizer: str = "adam"
    init_std: float = 0.1
    #: anchor truncation; None: the generator's default
    truncation: float | None = None
    #: classes to draw y from (conditional models), as `--classes` of genrep-generate; None: all
    classes: str | None = None
    seed: int = 0
    #: size of the fixed batch on which the initial and final losses are measured
    eval_size: int = 64
    #: autocast of the generator's forward passes (`auto`: bf16 on CUDA, fp32 elsewhere)
    precision: str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = {EDITS.canonical(name) for name in self.transforms}
        if not names:
            raise UsageError("--transforms needs at least one transformation")
        object.__setattr__(self, "transforms", tuple(n for n in EDIT_NAMES if n in names))
        check_ranges(self.ranges())
        checks = [
            (
                self.num_samples >= self.batch_size > 0,
                (
                    f"--batch-size must be > 0 and <= --num-samples, got {self.batch_size} and "
                    f"{self.num_samples}"
                ),
            ),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
            ),
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
            ),
            (self.init_std >= 0, f"--init-std must be >= 0, got {self.init_std}"),
            (
                self.truncation is None or self.truncation > 0,
                f"--truncation must be > 0, got {self.truncation}",
            ),
            (self.eval_size > 0, f"--eval-size must be > 0, got {self.eval_size}"),
            (
                self.precision == "auto" or self.precision in PRECISIONS,
                f"--precision must be auto or one of {', '.join(PRECISIONS)}, got "
                f"{self.precision!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def ranges(self) -> dict[str, float]:
        """Largest step of each edit that is learned (zoom: largest factor)."""
        return {name: float(getattr(self, range_field(name))) for name in self.transforms}

    @property
    def steps(self) -> int:
        return self.num_samples // self.batch_size

    def as_dict(self) -> dict[str, Any]:
        return to_plain(
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        )


def checkpoint_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


# --------------------------------------------------------------------------------------- training


class _Batches:
    """Latents, classes and step sizes of training step `step` (a pure function of seed and step)."""

    def __init__(self, generator: Generator, config: SteerConfig) -> None:
        self.generator, self.config = generator, config
        self.device = generator.device
        self.dtype = autocast_dtype(resolve_precision(config.precision, self.device))
        self.ranges = config.ranges()
        self.truncation = (
            generator.default_truncation if config.truncation is None else config.truncation
        )
        self.classes = generator.resolve_classes(config.classes)

    def draw(self, seed_index: int, n: int, stream: int):
        rng = sample_rng(self.config.seed, seed_index, stream)
        z = truncated_normal(rng, (n, self.generator.z_dim), self.truncation)
        y = (
            None
            if self.classes is None
            else torch.from_numpy(rng.choice(np.asarray(self.classes), n)).to(self.device)
        )
        alphas = draw_alphas(rng, n, self.ranges)
        steps = torch.from_numpy(latent_steps(alphas, self.ranges)).float().to(self.device)
        alphas = {name: torch.from_numpy(value).to(self.device) for name, value in alphas.items()}
        return torch.from_numpy(z).to(self.device), y, alphas, steps

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """The generator's forward passes at the run's precision (edits and loss stay fp32)."""
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            yield

    @torch.no_grad()
    def targets(self, z, y, alphas) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            images = self.generator(z, y)
        return apply_edits(images.float(), alphas)


def _loss(batches: _Batches, walks: torch.Tensor, z, y, steps, target, mask) -> torch.Tensor:
    with batches.autocast():
        images = batches.generator(z + steps @ walks, y)
    return masked_mse(images.float(), target, mask)


def _evaluate(walks: torch.Tensor, batches: _Batches) -> float:
    """Masked MSE of `walks` on the fixed evaluation batch (in chunks of the batch size)."""
    z, y, alphas, steps = batches.draw(0, batches.config.eval_size, _EVAL_STREAM)
    total, count, chunk = 0.0, 0.0, batches.config.batch_size
    with torch.no_grad():
        for start in range(0, len(z), chunk):
            part = slice(start, start + chunk)
            y_part = None if y is None else y[part]
            target, mask = batches.targets(z[part], y_part, {k: v[part] for k, v in alphas.items()})
            valid = float(mask.sum()) * target.shape[1]
            total += (
                float(_loss(batches, walks, z[part], y_part, steps[part], target, mask)) * valid
            )
            count += valid
    return total / max(count, 1.0)


def _identity(generator: Generator, config: SteerConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (the budget may grow, unless the learning
    rate schedule depends on it)."""
    settings = config.as_dict()
    if config.lr_schedule == "constant":
        settings.pop("num_samples")
    return to_plain({"model": generator.describe(), "config": settings})


def learn_walks(
    generator: Generator,
    config: SteerConfig,
    out: str | os.PathLike,
    *,
    resume: bool = True,
    checkpoint_every: int = 500,
    progress: bool = True,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Learn the walks of `config` for `generator` and write them atomically to `out`.

    A checkpoint (`<out>.ckpt`) is written every `checkpoint_every` steps and on Ctrl-C; with
    `resume`, a matching checkpoint is continued, so an interrupted run ends with the same walks.
    Returns the walk record that was written.
    """
    check_steerable(generator)
    config = dataclasses.replace(
        config, precision=resolve_precision(config.precision, generator.device)
    )
    if checkpoint_every <= 0:
        raise UsageError(f"--checkpoint-every must be > 0, got {checkpoint_every}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batches = _Batches(generator, config)
    device, names, identity = (
        batches.device,
        walk_names(config.transforms),
        _identity(generator, config),
    )
    init = torch.Generator().manual_seed(config.seed)
    walks = (torch.randn(len(names), generator.z_dim, generator=init) * config.init_std).to(device)
    walks.requires_grad_(True)
    optimizer = OPTIMIZERS[config.optimizer]([walks], lr=config.lr)
    start, losses, initial = 0, [], None

    ckpt = checkpoint_path(out)
    if resume and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise UsageError(
                f"cannot read checkpoint {ckpt} ({type(err).__name__}); delete it or "
                "pass --no-resume"
            ) from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
            raise UsageError(
                f"checkpoint {ckpt} was made for another model or config; pass "
                "--no-resume to start over (it is then replaced), or another --out"
            )
        with torch.no_grad():
            walks.copy_(state["walks"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses, initial = state["step"], state["losses"].tolist(), state["initial_loss"]
        log(f"resuming {out} from step {start} of {config.steps}")

    def save_checkpoint(step: int) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "identity": identity,
                "step": step,
                "walks": walks.detach().cpu(),
                "optimizer": optimizer.state_dict(),
                "losses": torch.tensor(losses, dtype=torch.float32),
                "initial_loss": initial,
            },
            ckpt,
        )

    # Gradients flow into the walks through the generator, even if a caller holds inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        if initial is None:
            initial = _evaluate(walks, batches)
        bar = tqdm(
            total=config.steps,
            initial=min(start, config.steps),
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            desc=f"steer {generator.name}",
        )
        # Steps left x the time of a step (the first one, which warms up allocators, excluded).
        slow = SlowJobWarning(
            device, config.steps - start, f"learning walks for {config.steps - start} steps", skip=1
        )
        step = start
        try:
            for step in range(start, config.steps):
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * LR_SCHEDULES[config.lr_schedule](step, config.steps)
                z, y, alphas, steps = batches.draw(step, config.batch_size, _TRAIN_STREAM)
                target, mask = batches.targets(z, y, alphas)
                loss = _loss(batches, walks, z, y, steps, target, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update()
                slow.update(step + 1 - start)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
                if (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
                    save_checkpoint(step + 1)
            step = max(start, config.steps)
        except KeyboardInterrupt:
            save_checkpoint(len(losses))  # the steps whose update the walks hold
            log(f"interrupted at step {len(losses)}: checkpoint {ckpt} saved; rerun to resume")
            raise
        finally:
            bar.close()
        final = _evaluate(walks, batches)

    record = {
        "format": WALKS_FORMAT,
        "format_version": WALKS_VERSION,
        "walks": walks.detach().cpu().float().contiguous(),
        "names": names,
        "ranges": config.ranges(),
        "units": {name: UNITS[name] for name in names},
        "model": generator.describe(),
        "config": config.as_dict(),
        "steps": step,
        "loss": {"initial": initial, "final": final},
        "losses": torch.tensor(losses, dtype=torch.float32),
    }
    atomic_torch_save(record, out)
    save_config(config_path(out), {**config.as_dict(), **config.extra, "out": str(out)})
    ckpt.unlink(missing_ok=True)
    log(
        f"wrote {len(names)} walks for {generator.name} to {out}: masked MSE on the evaluation "
        f"batch {initial:.4f} (initial walks) -> {final:.4f} after {step} steps"
    )
    return record


#: budget of the walks `--view steer` learns when no --walks is given (the paper's defaults)
AUTO_LEARN_CONFIG = SteerConfig()


def cached_walks(generator: Generator, log: Log = _stderr, progress: bool = True) -> Path:
    """The cached walk file of `generator`, learned once with `AUTO_LEARN_CONFIG` if missing."""
    path = cached_walks_path(generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(path.name + ".lock")):
        if path.exists():
            log(f"view steer: using the cached walks {path} (learned earlier for this model)")
            return path
        remove_stale_tmp(path.parent)
        config = AUTO_LEARN_CONFIG
        log(
            f"view steer: no --walks given, so learning the steering walks of {generator.name} once "
            f"({config.num_samples} samples, batch {config.batch_size}) and caching them in {path}; "
            "later runs reuse them"
        )
        learn_walks(
            generator,
            dataclasses.replace(config, extra={"model": generator.name}),
            path,
            progress=progress,
            log=log,
        )
    return path
