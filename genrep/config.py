"""`--config file.yaml` for every click CLI, and saving the resolved config next to artifacts.

A YAML key sets the default of the flag of the same name (`batch-size` or `batch_size`); flags given
on the command line still win. Unknown keys are an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    # A key may be the flag's name (`format`, `batch-size`) or its Python name (`batch_size`).
    params = {}
    for param in ctx.command.params:
        if param.name and param.expose_value:
            for name in (param.name, *(opt.lstrip("-") for opt in getattr(param, "opts", ()))):
                params[name.replace("-", "_")] = param
    defaults = {}
    for key, value in data.items():
        param = params.get(str(key).replace("-", "_"))
        if param is None:
            valid = sorted(
                {
                    p.opts[0].lstrip("-") if getattr(p, "opts", None) else p.name
                    for p in params.values()
                }
            )
            raise click.BadParameter(f"{path}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if getattr(param, "multiple", False) and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]  # a KEY=VALUE option as a mapping
        defaults[param.name] = value
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


def parse_key_values(
    _ctx: click.Context | None, _param: click.Parameter | None, values: Any
) -> dict[str, Any]:
    """Click callback: repeated `KEY=VALUE` flags as a dict, values typed as YAML (`64` is an int)."""
    options = {}
    for item in values or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options


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
