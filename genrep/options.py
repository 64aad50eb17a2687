"""The options every command shares, defined once: --config, --device, --precision, --workers,
--progress, and `KEY=VALUE` options.

Each command adds the ones it uses with `common_options(...)` and resolves them with the functions
here, so `--device auto` means the same thing in every stage and a device that does not exist gets
the same one-line error everywhere.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import click
import torch
import yaml

from genrep.config import parse_yaml, read_yaml
from genrep.errors import DeviceError, UsageError, one_line, warn

#: autocast dtypes by --precision name; fp32 runs without autocast
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
#: seconds of estimated CPU work above which a command warns that it runs without a GPU
CPU_WARNING_SECONDS = 3600
#: key of click's `ctx.meta` holding the path of the --config file in use
CONFIG_META = "genrep.config"
#: most helper processes per rank a command starts
MAX_WORKERS = 256


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Helper processes per rank: the CPUs of this process shared by the local ranks, one kept for
    the rank itself, at most 8."""
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, available_cpus() // local_ranks - 1))


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or None): the rank's CUDA device when there is one, else the CPU; otherwise the named
    device, checked to exist. Under torchrun, a bare `cuda` means `cuda:LOCAL_RANK`."""
    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type not in ("cpu", "mps"):
        raise DeviceError(f"--device {name}: genrep runs on cpu or cuda, not {device.type}")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA, fp32 elsewhere; otherwise the named precision, which must exist."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise UsageError(f"--precision {name!r}: choose auto or one of {', '.join(PRECISIONS)}")
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: no autocast)."""
    return PRECISIONS[precision]


def warn_if_slow_on_cpu(device: torch.device, seconds: float, what: str) -> None:
    """One warning line when a job estimated to take over an hour runs without a GPU."""
    if device.type == "cpu" and seconds > CPU_WARNING_SECONDS:
        warn(
            f"{what} runs on the CPU and should take about {seconds / 3600:.1f} h; "
            "a CUDA GPU (--device auto or cuda) is much faster"
        )


class SlowJobWarning:
    """Warns once, early in a job, when it runs on the CPU and will take over an hour.

    The job reports how many of its `total` units (images, steps) are done; after `skip` units
    (start-up: worker processes, first-call overheads) it starts a clock, and once `measure` more
    are done it projects the rate onto the units left and calls `warn_if_slow_on_cpu`.
    """

    def __init__(
        self,
        device: torch.device,
        total: int,
        what: str,
        *,
        skip: int = 0,
        measure: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.device, self.total, self.what = device, total, what
        self.skip, self.measure, self.clock = skip, max(1, measure), clock
        self.active = device.type == "cpu"
        self._start: tuple[int, float] | None = (0, clock()) if skip <= 0 else None

    def update(self, done: int) -> None:
        """`done` units of the job are finished."""
        if not self.active:
            return
        if self._start is None:
            if done >= self.skip:
                self._start = (done, self.clock())
            return
        first, started = self._start
        if done - first < self.measure:
            return
        self.active = False
        per_unit = (self.clock() - started) / (done - first)
        warn_if_slow_on_cpu(self.device, per_unit * max(0, self.total - done), self.what)


def common_options(
    *, device: bool = False, precision: bool = False, workers: bool = False, progress: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the shared flags a command uses (place it below `@config_option`)."""
    decorators = []
    if device:
        decorators.append(
            click.option(
                "--device",
                default="auto",
                show_default=True,
                help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
            )
        )
    if precision:
        decorators.append(
            click.option(
                "--precision",
                type=click.Choice(["auto", *PRECISIONS]),
                default="auto",
                show_default=True,
                help="auto: bf16 autocast on CUDA, fp32 on CPU.",
            )
        )
    if workers:
        decorators.append(
            click.option(
                "--workers",
                type=click.IntRange(min=0, max=MAX_WORKERS),
                default=default_workers,
                show_default="CPUs per rank - 1, at most 8",
                help="Helper processes (image encoding or decoding) per rank.",
            )
        )
    if progress:
        decorators.append(
            click.option(
                "--progress/--no-progress",
                default=True,
                show_default=True,
                help="Show a progress bar.",
            )
        )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(decorators):
            command = option(command)
        return command

    return decorate


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    if not path:
        return path
    data = read_yaml(path, click.BadParameter) or {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a YAML mapping of flag names to values")
    # A key may be the flag's name (`format`, `batch-size`) or its Python name (`batch_size`).
    params: dict[str, click.Parameter] = {}
    for option in ctx.command.params:
        if option.name and option.expose_value:
            for name in (option.name, *(opt.lstrip("-") for opt in getattr(option, "opts", ()))):
                params[name.replace("-", "_")] = option
    recorded: frozenset[str] = getattr(ctx.command, "recorded_keys", frozenset())
    defaults = {}
    for key, value in data.items():
        if str(key) in recorded:
            continue  # derived when the command ran (a saved config): derived again now
        if str(key) == "out":
            # A config file may come with a dataset or run from elsewhere: where to write is
            # chosen on this command line (--out) or by the default, never by the file.
            click.echo(f"note: {path}: ignoring out: {value} (pass --out to choose)", err=True)
            continue
        param = params.get(str(key).replace("-", "_"))
        if param is None:
            valid = sorted(
                {
                    p.opts[0].lstrip("-") if getattr(p, "opts", None) else p.name
                    for p in params.values()
                    if p.name != "out"  # never taken from a file (above)
                }
            )
            raise click.BadParameter(f"{path}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if getattr(param, "multiple", False) and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]  # a KEY=VALUE option as a mapping
        defaults[param.name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[CONFIG_META] = path
    return path


def config_option(command: Callable) -> Callable:
    """Add `--config FILE` to a click command; it must be the outermost option decorator.

    A YAML key sets the default of the flag of the same name (`batch-size` or `batch_size`); flags
    given on the command line still win. Unknown keys are an error, so a typo never silently does
    nothing; `out` is never taken from a file.
    """
    return click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file whose keys set any of this command's flags (flags still win).",
    )(command)


def check_number(
    label: str,
    value: float | None,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> None:
    """Refuse (`UsageError`) a number that is not finite or lies outside its range, before anything
    uses it; None passes (a default is taken)."""
    if value is None:
        return
    bounds = [
        (at_least, ">=", lambda v, b: v >= b),
        (above, ">", lambda v, b: v > b),
        (at_most, "<=", lambda v, b: v <= b),
        (below, "<", lambda v, b: v < b),
    ]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{label} must be a number, got {value!r}")
    rule = " and ".join(f"{sign} {bound}" for bound, sign, _ in bounds if bound is not None)
    if isinstance(value, float):
        rule = f"a finite number {rule}"
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and all(ok(value, bound) for bound, _, ok in bounds if bound is not None)):
        raise UsageError(f"{label} must be {rule}, got {value}")


def flag_label(name: str) -> str:
    """An option name as the flag a user types (`projection_dim` -> `--projection-dim`)."""
    return "--" + name.replace("_", "-")


def parse_key_values(
    _ctx: click.Context | None, _param: click.Parameter | None, values: Any
) -> dict[str, Any]:
    """Click callback: repeated `KEY=VALUE` flags as a dict, values typed as YAML (`64` is an int)."""
    options = {}
    for item in values or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            options[key.replace("-", "_")] = parse_yaml(value)
        except yaml.YAMLError as err:
            raise click.BadParameter(
                f"{item!r}: VALUE is not YAML ({one_line(str(err))})"
            ) from None
    return options


class RegistryChoice(click.ParamType):
    """A flag whose value names an entry of a registry; help and errors list the registered names,
    which are read when needed, so an entry added to the registry shows up everywhere.

    For a registry that takes code references (`module:attr`, `file.py:attr`), a reference is
    accepted only when typed on the command line: one set by a --config file is refused, because a
    config may come with a shared dataset, and data must never make genrep run code.
    """

    def __init__(self, registry: Any, kind: str | None = None) -> None:
        """`registry`, or a function that imports and returns it (with its `kind` given here): a
        command then imports another stage's code only when the flag is used or its help shown."""
        self._registry = registry
        self.name = kind or registry.kind

    @property
    def _imported(self) -> bool:
        return hasattr(self._registry, "kind")

    @property
    def registry(self) -> Any:
        """The registry, imported on first use when given as a function."""
        if not self._imported:
            self._registry = self._registry()
        return self._registry

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        references = ["MODULE:ATTR", "FILE.py:ATTR"] if self.registry.accepts_references else []
        return "[" + "|".join([*self.registry.canonical_names(), *references]) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from genrep.registry import RegistryError, is_reference

        text = str(value)
        if not self._imported and ctx and param and param.name and param.default == value:
            if ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT:
                return text  # the command's own default: no need to import another stage's code
        if self.registry.accepts_references and is_reference(text) and ctx and param:
            source = ctx.get_parameter_source(param.name)
            if source is not click.core.ParameterSource.COMMANDLINE:
                where = ctx.meta.get(CONFIG_META) or "a value not typed on the command line"
                flag = param.opts[0] if getattr(param, "opts", None) else param.name
                raise UsageError(
                    f"{where} sets {flag} to the code reference {text!r}; genrep imports code only "
                    f"when it is named on the command line: pass {flag} {text} yourself if you "
                    "trust that code"
                )
        try:
            return self.registry.canonical(text)
        except RegistryError as err:
            self.fail(str(err), param, ctx)
