"""The errors a user can fix, and the one place that turns them into one-line CLI messages.

Every mistake a user can correct (a flag value, a file that is not what it should be, a dataset
that cannot be read, a device that is not there) is a `UserError`. Every command is a `Command`
(or a `Group` of them), which prints such an error as one line and exits with its `exit_code`: 2
for a usage mistake (`UsageError`: bad flags or config, or a dataset argument that names no dataset),
1 for everything found at run time (a dataset that is there but damaged). Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import click

#: exit status of a usage mistake, as click uses for flags it cannot parse
USAGE_EXIT = 2
#: exit status of an error found while running
RUNTIME_EXIT = 1


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""

    exit_code = RUNTIME_EXIT

    def __str__(self) -> str:
        # Raised in a DataLoader worker, the error is rebuilt in the main process with the worker's
        # traceback in its message; the last line is the message that says what is wrong.
        # Python names the type there with its module (`genrep.errors.DataError: ...`).
        text = super().__str__()
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            kind, sep, message = last.partition(": ")  # the traceback qualifies the class name
            text = message if sep and kind.rsplit(".", 1)[-1] == type(self).__name__ else last
        return text


class UsageError(UserError):
    """A flag or config value that cannot be used as given."""

    exit_code = USAGE_EXIT


class DeviceError(UsageError):
    """A --device that does not exist here."""


class DataError(UserError):
    """Input data (a dataset folder, an image folder, a shard) that cannot be used."""


class ManifestError(DataError):
    """A folder that is not a readable genrep dataset."""


class NotADatasetError(ManifestError, UsageError):
    """A path or URL given as a dataset that holds none: a wrong argument, so exit 2 like click's
    own refusal of a folder that does not exist."""


class ShardFormatError(DataError):
    """A sample or shard that does not follow the shard format."""


class WeightsError(UserError):
    """Generator weights that cannot be found, fetched or read."""


class CheckpointError(UserError):
    """A file that is not a usable checkpoint, backbone or walk file."""


class NetworkError(UserError):
    """A remote dataset or dataset hub that could not be reached, or refused the request."""


class OutputError(UsageError):
    """An output path that genrep will not write to (it would overwrite what it does not own)."""


def refuse_to_replace(
    path: str | os.PathLike[str], overwrite: bool, instead: str = "another --out"
) -> None:
    """The one-line refusal of an output file that is already there (a link too, even dangling),
    unless the user passed --overwrite."""
    if not overwrite and os.path.lexists(path):
        raise OutputError(f"{path} exists; pass --overwrite to replace it, or {instead}")


class _CliError(click.ClickException):
    """click prints it as `Error: MESSAGE` on stderr and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escape sequences, carriage returns,
    bidirectional overrides) written as its Python escape: what a shared dataset states is shown,
    never obeyed by the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str) -> str:
    """A message folded onto one line (errors from libraries sometimes span several), printable."""
    return printable(
        " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a `UserError` (or what the system runs out of: an OSError such as a full disk or a
    permission, memory) into click's one-line `Error: MESSAGE` and the error's exit code; anything
    else keeps its traceback."""
    try:
        yield
    except UserError as err:
        raise _CliError(one_line(str(err)), err.exit_code) from None
    except OSError as err:
        if err.errno is None:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise _CliError(f"{err.strerror}{where}", RUNTIME_EXIT) from None
    except MemoryError:
        raise _CliError(
            "out of memory: lower the sizes, batch size or worker count given to this command",
            RUNTIME_EXIT,
        ) from None


class Command(click.Command):
    """A click command whose user errors, from flag callbacks or the command itself, are one line.

    `recorded_keys`: keys the command's saved config records besides its flags (values it derived);
    `--config` skips them, so that the saved config replays.
    """

    def __init__(self, *args: Any, recorded_keys: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded_keys = frozenset(recorded_keys)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors():
            return super().invoke(ctx)


class Group(click.Group):
    """A click group whose subcommands are `Command`s (and whose own errors are one line too)."""

    command_class = Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with one_line_errors():
            return super().make_context(*args, **kwargs)


Group.group_class = Group


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)
