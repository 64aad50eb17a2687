"""The configuration of a training run: every flag of `genrep-train`, and what `resolve` derives.

One frozen, typed record goes from the command line to the trainer, and into `checkpoint.pt` and
`config.yaml` as a plain dict whose keys are its field names. Field metadata says which settings
may differ when a run resumes (`resumable`), which are options of the objective
(`objective_option`: the objective's constructor takes them, and others refuse them), which
describe the generator of an online run (`online`: genrep-generate's flags, train/online.py), which
`resolve` derives (`derived`: recorded, set by no flag, skipped when `--config` replays a saved
config.yaml), and the range a number must lie in, checked when the record is made, so that a bad
flag is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from genrep.config import to_plain
from genrep.errors import UsageError
from genrep.options import check_number, default_workers, flag_label, resolve_precision
from genrep.train.data import DatasetInfo, steps_per_epoch
from genrep.train.objectives import OBJECTIVES
from genrep.train.online import GeneratorInfo
from genrep.train.tx import build_recipe

#: the batch size at which --lr is given; the lr used scales linearly with the global batch
LR_REFERENCE_BATCH = 256
DEFAULT_EPOCHS = 20
#: where Tx runs (--tx-on): in the DataLoader workers, per image with PIL, or batched on the
#: training device after the workers decoded the stored frames; auto: the device when it is CUDA
TX_PLACES = ("auto", "workers", "device")
#: arguments of an objective's constructor before its options: feature width and dataset info
OBJECTIVE_CONTEXT = 2
#: upper bounds of the settings that multiply the memory of a batch or a head
MAX_INPUT_SIZE = 2048
MAX_VIEWS = 64
MAX_PROJECTION_DIM = 1 << 16


def setting(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    resumable: bool = False,
    objective_option: bool = False,
    online: bool = False,
    derived: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A field of `TrainConfig` with its metadata (see the module docstring)."""
    metadata = {
        "resumable": resumable,
        "objective_option": objective_option,
        "online": online,
        "derived": derived,
        "range": {"at_least": at_least, "above": above, "at_most": at_most},
    }
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class DataSummary:
    """What a run records about its training input (`dataset` in config.yaml)."""

    name: str
    epoch_size: int
    image_size: int
    neighbors: int
    z_dim: int | None
    classes: tuple[int | str, ...] | None
    real_fraction: float | None

    @classmethod
    def of(cls, info: DatasetInfo) -> DataSummary:
        classes = None if info.classes is None else tuple(info.classes)
        return cls(
            info.name,
            info.epoch_size,
            info.image_size,
            info.neighbors,
            info.z_dim,
            classes,
            info.real_fraction,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; `resolve` fills in what the flags leave to the data."""

    # the training input
    shards: tuple[str, ...] = setting((), resumable=True)
    real: str | None = setting(None, resumable=True)
    real_fraction: float | None = None
    # or samples straight from a generator (online training): genrep-generate's flags
    generator: str | None = setting(None, online=True)
    generator_weights: str | None = setting(None, online=True, resumable=True)
    generator_option: dict[str, Any] = setting(default_factory=dict, online=True)
    generator_device: str | None = setting(None, online=True, resumable=True)
    generator_batch_size: int = setting(64, online=True, resumable=True, at_least=1)
    generator_seed: int = setting(0, online=True)
    stream: bool = setting(False, online=True)
    view: str = setting("gaussian", online=True)
    walks: str | None = setting(None, online=True)
    learn_walks: bool = setting(False, online=True, resumable=True)
    step_scale: dict[str, Any] = setting(default_factory=dict, online=True)
    n: int | None = setting(None, online=True, at_least=1)
    per_class: int | None = setting(None, online=True, at_least=1)
    neighbors: int = setting(1, online=True, at_least=0)
    sigma: float | None = setting(None, online=True)
    truncation: float | None = setting(None, online=True)
    classes: str | None = setting(None, online=True)
    frame: str = setting("full", online=True)
    size: int | None = setting(None, online=True, at_least=1)
    shard_size: int = setting(1000, online=True, at_least=1)
    # what is learned
    objective: str = "simclr"
    arch: str = "resnet50"
    tx: str = "genrep"
    augment: bool | None = None
    tx_on: str = setting("auto", resumable=True)
    input_size: int | None = setting(None, at_least=1, at_most=MAX_INPUT_SIZE)
    views: int | None = setting(None, at_least=1, at_most=MAX_VIEWS)
    temperature: float | None = setting(None, objective_option=True, above=0)
    base_temperature: float | None = setting(None, objective_option=True, above=0)
    projection_dim: int | None = setting(
        None, objective_option=True, at_least=1, at_most=MAX_PROJECTION_DIM
    )
    # the optimisation
    batch_size: int = setting(256, at_least=1)
    lr: float = setting(0.03, above=0)
    momentum: float = setting(0.9, at_least=0)
    weight_decay: float = setting(1e-4, at_least=0)
    epochs: int | None = setting(None, at_least=1)
    steps: int | None = setting(None, at_least=1)
    warmup_steps: int = setting(0, at_least=0)
    shuffle_buffer: int = setting(1000, at_least=1)
    seed: int = 0
    # how it runs and where it writes
    workers: int = setting(default_factory=default_workers, resumable=True, at_least=0)
    device: str = setting("auto", resumable=True)
    precision: str = setting("auto", resumable=True)
    checkpoint_every: int = setting(500, resumable=True, at_least=1)
    log_every: int = setting(10, resumable=True, at_least=1)
    strict: bool = setting(False, resumable=True)
    verify: bool = setting(True, resumable=True)
    progress: bool = setting(True, resumable=True)
    out: str | None = setting(None, resumable=True)
    # filled in by `resolve` (`derived`: no flag sets them, and `--config` skips them)
    steps_per_epoch: int | None = setting(None, derived=True)
    lr_scaled: float | None = setting(None, derived=True)
    world_size: int | None = setting(None, resumable=True, derived=True)
    local_batch_size: int | None = setting(None, resumable=True, derived=True)
    dataset: DataSummary | None = setting(None, derived=True)
    manifest_hash: str | None = setting(None, derived=True)
    #: views without Tx take the central `center_crop` px of each stored frame (App. A); None:
    #: the stored images are crops already
    center_crop: int | None = setting(None, derived=True)
    #: what decides an online run's samples (generator with its weights' hash, view, seed, ...)
    generator_identity: dict[str, Any] | None = setting(None, derived=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(str(folder) for folder in self.shards))
        for spec in fields(self):
            if any(bound is not None for bound in spec.metadata.get("range", {}).values()):
                check_number(
                    flag_label(spec.name), getattr(self, spec.name), **spec.metadata["range"]
                )

    def objective_options(self) -> dict[str, Any]:
        """The objective's options as set here (None: the objective's default, or not taken)."""
        return {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if spec.metadata.get("objective_option")
        }

    @classmethod
    def derived_fields(cls) -> tuple[str, ...]:
        """The fields `resolve` fills in: a saved config.yaml records them, but no flag sets them."""
        return tuple(spec.name for spec in fields(cls) if spec.metadata.get("derived"))

    def to_plain(self) -> dict[str, Any]:
        """The config as saved in checkpoint.pt and config.yaml."""
        return to_plain(asdict(self))

    def resolve(self, info: DatasetInfo, world: int, device: torch.device) -> TrainConfig:
        """This config with every default filled in from the data, the ranks and the device;
        a combination that cannot train is a one-line UsageError (or DataError)."""
        objective = OBJECTIVES.get(self.objective)
        objective.check(info)
        k = info.neighbors
        views = self.views or objective.default_views or (k + 1 if k else 2)
        if k and views > k + 1:
            raise UsageError(
                f"--views {views} needs {views - 1} neighbor views per anchor; "
                f"{info.name} stores {k}: pass --views {k + 1} or fewer"
            )
        if views < objective.min_views:
            raise UsageError(
                f"{objective.name} needs {objective.min_views} or more views of a sample: "
                f"pass --views {objective.min_views} or more"
            )
        online = isinstance(info, GeneratorInfo)
        augment = objective.default_augment if self.augment is None else self.augment
        if objective.contrastive and not augment and k == 0:
            raise UsageError(
                f"with --no-augment the views of {info.name} would be identical copies (it has no "
                "latent neighbor views): drop --no-augment, or train on a dataset made with a view"
            )
        recipe = build_recipe(self.tx)
        batch = self.batch_size
        if batch % world:
            raise UsageError(
                f"--batch-size {batch} (global) must be divisible by the {world} ranks"
            )
        if objective.contrastive and batch < 2:
            raise UsageError(
                "contrastive objectives need --batch-size 2 or more (in-batch negatives)"
            )
        if self.epochs is not None and self.steps is not None:
            raise UsageError("pass --epochs or --steps, not both")
        per_epoch = steps_per_epoch(info, batch)
        epochs = self.epochs or DEFAULT_EPOCHS
        steps = self.steps or epochs * per_epoch
        if self.warmup_steps >= steps:
            raise UsageError(
                f"--warmup-steps {self.warmup_steps} is not below the run's {steps} steps: its lr "
                "would never decay (cosine after warmup); pass fewer warmup steps"
            )
        # a run on shards records no generator flags (nor did runs before online training)
        cleared: dict[str, Any] = (
            {}
            if online
            else {spec.name: None for spec in fields(self) if spec.metadata.get("online")}
        )
        return replace(
            self,
            objective=objective.name,
            tx=recipe.name,
            views=views,
            augment=augment,
            tx_on=self._tx_place(augment, device),
            input_size=self.input_size or recipe.default_input_size(info.train_side),
            steps=steps,
            epochs=None if self.steps else epochs,
            device=str(device),
            precision=resolve_precision(self.precision, device),
            out=str(self.out or Path("runs") / f"{info.name}-{objective.name}"),
            steps_per_epoch=per_epoch,
            lr_scaled=self.lr * batch / LR_REFERENCE_BATCH,
            world_size=world,
            local_batch_size=batch // world,
            dataset=DataSummary.of(info),
            manifest_hash=info.manifest_hash,
            center_crop=info.center_crop,
            generator_identity=info.generator_identity if online else None,
            **cleared,
            **self._effective_objective_options(objective.name),
        )

    def _tx_place(self, augment: bool, device: torch.device) -> str:
        """Where Tx runs: `device` only for augmented views of shards (real photos differ in size
        and cannot be batched before their crop), `workers` when the flags leave it open on CPU."""
        if self.tx_on not in TX_PLACES:
            raise UsageError(f"--tx-on must be one of {', '.join(TX_PLACES)}, got {self.tx_on!r}")
        if self.tx_on == "device" and self.real is not None:
            raise UsageError(
                "--tx-on device batches stored frames of one size; with --real pass --tx-on workers"
            )
        if not augment or self.real is not None:
            return "workers"
        if self.tx_on == "auto":
            return "device" if device.type == "cuda" else "workers"
        return self.tx_on

    def _effective_objective_options(self, objective: str) -> dict[str, Any]:
        """Each objective option as the objective will use it (its default when not given), None
        for those it does not take; giving one it does not take is a UsageError."""
        given = OBJECTIVES.check_options(
            objective, OBJECTIVE_CONTEXT, option_label=flag_label, **self.objective_options()
        )
        taken = OBJECTIVES.options(objective, OBJECTIVE_CONTEXT)
        return {
            name: given.get(name, taken[name].default) if name in taken else None
            for name in self.objective_options()
        }

    def changes_from(self, saved: dict[str, Any]) -> list[str]:
        """The settings in which a saved run's config differs from this one, except those that
        may change on resume (and objective options this objective does not take: they have no
        effect, though an earlier genrep recorded them)."""
        current = self.to_plain()
        ignored = {
            spec.name
            for spec in fields(self)
            if spec.metadata.get("resumable")
            or (spec.metadata.get("objective_option") and current[spec.name] is None)
        }
        return sorted(
            f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
            for key in (set(saved) | set(current)) - ignored
            if saved.get(key) != current.get(key)
        )
