"""`--config file.yaml` for every click CLI, and saving the resolved config next to artifacts.

A YAML key sets the default of the flag of the same name (`batch-size` or `batch_size`); flags given
on the command line still win. Unknown keys are an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click
import yaml


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    if not path:
        return path
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise click.BadParameter(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a YAML mapping of flag names to values")
    known = {p.name for p in ctx.command.params if p.name and p.expose_value}
    defaults = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise click.BadParameter(
                f"{path}: unknown key {key!r}; valid keys: {', '.join(sorted(known))}"
            )
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def config_option(command: Callable) -> Callable:
    """Add `--config FILE` to a click command; it must be the outermost option decorator."""
    return click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file whose keys set any of this command's flags (flags still win).",
    )(command)


def to_plain(value: Any) -> Any:
    """Make a config value YAML/JSON safe (paths to strings, tuples to lists)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def save_config(path: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write a resolved config as YAML, atomically."""
    from genrep.io import atomic_write_bytes

    text = yaml.safe_dump(to_plain(config), sort_keys=True)
    atomic_write_bytes(path, text.encode())
