"""Resolved configurations saved next to artifacts (manifest, checkpoint, probe report), as YAML
that `--config` replays (see `genrep.options.config_option`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from genrep.errors import DataError, UsageError, one_line

#: largest YAML file genrep reads (a resolved config is a few KiB)
MAX_YAML_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: with `*name`, a few lines of a received file stand for
    billions of values (genrep never writes one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not read: write the value out", mark
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str | bytes) -> Any:
    """The value of a YAML document (safe types only, no aliases)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  # a SafeLoader


def read_yaml(path: str | os.PathLike, error: type[Exception] = UsageError) -> Any:
    """The value of a YAML file that may have come with a dataset or a run (a config.yaml): a
    regular file (a FIFO never blocks) of at most `MAX_YAML_BYTES`, parsed by `parse_yaml`; any
    problem is one `error` naming the file."""
    from genrep.remote import read_capped

    try:
        return parse_yaml(read_capped(Path(path), MAX_YAML_BYTES, "YAML file"))
    except DataError as err:  # not a regular file, or too large
        raise error(str(err)) from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"cannot read {path}: {one_line(str(err))}") from None


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
