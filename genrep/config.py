"""Resolved configurations saved next to artifacts (manifest, checkpoint, probe report), as YAML
that `--config` replays (see `genrep.options.config_option`)."""

from __future__ import annotations

import os
from typing import Any

import yaml


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
