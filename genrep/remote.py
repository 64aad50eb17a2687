"""Datasets at a URL: where their files are, and reading them over a network that may fail.

A dataset location is a local folder or a URL of the folder:

- `https://`, `http://`, `s3://`, `gs://`, `hf://datasets/OWNER/NAME`, `memory://`, `file://`,
  or any other protocol fsspec knows, read through fsspec (https needs aiohttp, s3 s3fs, gs gcsfs,
  hf huggingface_hub: the extras `genrep[remote]`, `genrep[s3]`, `genrep[gcs]`, `genrep[hub]`);
- `pipe:COMMAND`, webdataset's convention: a shell command whose standard output is the file,
  with `{}` standing for the file's name (`pipe:aws s3 cp s3://bucket/ds/{} -`). It runs code, so
  it is accepted only when typed on the command line (`check_typed`), never from a --config file
  or a manifest, the same rule as for code references.

The manifest is fetched first (at most `genrep.manifest.MAX_MANIFEST_BYTES`); shards are
streamed, never copied whole to disk. A request that fails on the network is retried `RETRIES` times with exponential
backoff, a stream that breaks mid-file is reopened where it broke, and then it is one line
(`NetworkError`). What the stream holds is checked by the same reader as a local file's: only the
format's members and shard names, the same size caps, no pickle, checksums: `open_file` is the
one function that opens a dataset's files, local or not.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import click

from genrep.errors import DataError, NetworkError, UsageError, one_line
from genrep.io import open_regular

#: a URL: a scheme, then ://
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
PIPE = "pipe:"
#: attempts after the first, and the first wait (doubled after each failure)
RETRIES = 4
BACKOFF_S = 0.5
#: progress after which a broken stream's failures are counted afresh
RESET_AFTER_BYTES = 64 << 20
#: the extra each fsspec protocol needs
EXTRAS = {"http": "remote", "https": "remote", "s3": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hub"}


def is_remote(location: str | Any) -> bool:
    """Whether a dataset location is a URL or a pipe: command rather than a local path."""
    text = str(location)
    return text.startswith(PIPE) or bool(URL_RE.match(text))


#: where a dataset or one of its files is: a local path, or a URL / pipe: command (kept a string:
#: a Path would fold the // of a URL)
Location = str | Path


def check_typed(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: refuse a `pipe:` location that did not come from the command line."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(str(v).startswith(PIPE) for v in values if v is not None):
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is not click.core.ParameterSource.COMMANDLINE:
            raise UsageError(
                f"a {PIPE} location runs a shell command; genrep runs one only when it is typed "
                "on the command line, not taken from a --config file"
            )
    return value


class DatasetLocation(click.ParamType):
    """A dataset argument: an existing local folder, or a URL or pipe: command (`check_typed`)."""

    name = "DIR|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if is_remote(value):
            if ctx is not None and param is not None:
                check_typed(ctx, param, value)
            return str(value)
        return click.Path(exists=True, file_okay=False).convert(value, param, ctx)


def locate(location: Location, name: str) -> Location:
    """The file `name` of the dataset at `location`: a path in a folder, else a URL (`join`)."""
    return join(str(location), name) if is_remote(location) else Path(location) / name


def dataset_name(location: str) -> str:
    """The name of a dataset at a URL: the last segment of its folder's address."""
    folder = location.split("{}", 1)[0] if location.startswith(PIPE) else location
    return folder.rstrip("/").rsplit("/", 1)[-1].split()[-1]


def join(location: str, name: str) -> str:
    """The URL (or pipe: command) of the file `name` of the dataset at `location`."""
    if location.startswith(PIPE):
        if "{}" not in location:
            raise UsageError(f"{location!r}: a {PIPE} location needs {{}} where the file name goes")
        return location.replace("{}", shlex.quote(name))
    return location.rstrip("/") + "/" + name


def _fsspec_open(url: str) -> BinaryIO:
    """An fsspec file opened for streaming (no local copy, no read-ahead of the whole file)."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        extra = EXTRAS.get(protocol)
        hint = f"pip install 'genrep[{extra}]'" if extra else "install the fsspec backend for it"
        raise UsageError(
            f"cannot read {protocol}:// URLs here ({one_line(str(err))}): {hint}"
        ) from None
    kwargs = {"block_size": 0} if protocol in ("http", "https") else {}
    return fs.open(path, "rb", **kwargs)


class _PipeFile(io.RawIOBase):
    """The standard output of a pipe: command; a failed command is an OSError when it ends."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command[len(PIPE) :], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        stdout, stderr = self.process.stdout, self.process.stderr
        assert stdout is not None and stderr is not None  # both are pipes
        data = stdout.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n == 0:
            status = self.process.wait()
            if status != 0:
                detail = one_line(stderr.read(2000).decode(errors="replace"))
                raise OSError(f"{self.command!r} exited with status {status}: {detail}")
        return n

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        super().close()


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed network read raises: OSError (fsspec's http raises FileNotFoundError for a
    refused connection), aiohttp's client errors and timeouts."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, EOFError]
    try:
        import aiohttp

        errors += [aiohttp.ClientError]
    except ImportError:
        pass
    return tuple(errors)


def _not_found(err: BaseException) -> bool:
    """A file that is not there (no retry helps), as opposed to a network that failed: fsspec's
    http raises FileNotFoundError for both, from a 404 response or a failed connection."""
    if not isinstance(err, FileNotFoundError):
        return False
    cause = err.__cause__ or err.__context__
    return cause is None or getattr(cause, "status", None) in (404, 410)


class RetryingReader(io.RawIOBase):
    """A sequential read of one remote file that survives broken connections: after a network
    error it reopens the file and skips what was already read, `RETRIES` times with backoff."""

    def __init__(self, opener: Callable[[], BinaryIO], url: str) -> None:
        self.opener, self.url = opener, url
        self.position, self.failures, self.failed_at = 0, 0, 0
        self.file: BinaryIO | None = _with_retries(opener, url)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        errors = _network_errors()
        while True:
            try:
                file = self.file if self.file is not None else self._reopen()
                data = file.read(len(buffer))
            except errors as err:
                if _not_found(err) and self.position == 0:
                    raise
                self._drop()
                # failures with little progress between them count together; a long stream
                # that breaks now and then starts a new count after each RESET_AFTER_BYTES
                progressed = self.position - self.failed_at >= RESET_AFTER_BYTES
                self.failures = 1 if progressed else self.failures + 1
                self.failed_at = self.position
                _give_up_or_wait(self.failures - 1, err, self.url)
                continue
            buffer[: len(data)] = data
            self.position += len(data)
            return len(data)

    def _drop(self) -> None:
        """Forget a broken connection (closing it may fail too)."""
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except Exception:  # a broken connection fails to close in many ways; it is gone
                pass

    def _reopen(self) -> BinaryIO:
        """Open the file again at the position reached."""
        self.file = file = self.opener()
        try:  # range requests where the file system has them (s3, gs, seekable http)
            file.seek(self.position)
            return file
        except (ValueError, OSError, io.UnsupportedOperation):  # a plain stream: skip by reading
            pass
        left = self.position
        while left:
            chunk = file.read(min(left, 1 << 20))
            if not chunk:
                raise NetworkError(f"{self.url} became shorter while it was read; rerun")
            left -= len(chunk)
        return file

    def close(self) -> None:
        self._drop()
        super().close()


def _give_up_or_wait(attempt: int, err: BaseException, url: str) -> None:
    if attempt >= RETRIES:
        detail = one_line(str(err))
        if detail in ("", url):  # fsspec's http names only the URL; the cause says what failed
            cause = err.__cause__ or err.__context__
            detail = one_line(str(cause)) if cause is not None else type(err).__name__
        raise NetworkError(
            f"{url}: {detail} (after {RETRIES + 1} attempts); check the network and rerun"
        ) from None
    time.sleep(BACKOFF_S * 2**attempt)


def _with_retries(opener: Callable[[], BinaryIO], url: str) -> BinaryIO:
    errors = _network_errors()
    for attempt in range(RETRIES + 1):
        try:
            return opener()
        except errors as err:
            if _not_found(err):
                raise FileNotFoundError(url) from None
            _give_up_or_wait(attempt, err, url)
    raise AssertionError("unreachable")


def open_stream(url: str) -> BinaryIO:
    """A buffered, retrying sequential stream of the file at `url` (FileNotFoundError if absent)."""

    def opener() -> Any:
        return _PipeFile(url) if url.startswith(PIPE) else _fsspec_open(url)

    return io.BufferedReader(RetryingReader(opener, url), buffer_size=1 << 20)


def size_problem(size: int | None, expected: int) -> str:
    """A file's size that is not its manifest's (None: larger, how much is not known)."""
    return f"size {'over ' + str(expected) if size is None else size} != {expected} in the manifest"


class _SizedReader(io.RawIOBase):
    """A file that must hold exactly `size` bytes: reading past them, or an end before them, is a
    DataError (the file is not that dataset's)."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file, self.size, self.left = file, size, size
        self.problem = ""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.problem:
            data = self.file.read(min(len(buffer), self.left + 1))
            if len(data) > self.left:
                self.problem = size_problem(None, self.size)
            elif not data and self.left and len(buffer):
                self.problem = size_problem(self.size - self.left, self.size)
        if self.problem:  # every later read too: what was read of the file is gone
            raise DataError(self.problem)
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.file.close()
        super().close()


def open_file(location: Location, size: int | None = None, what: str | None = None) -> BinaryIO:
    """A dataset file for reading in order, from a folder or a URL: the one function readers
    open shards and manifests with. A local file must be a regular file (a FIFO, a device or a
    folder is a DataError naming it as `what`, default its path, and is never read). With `size`
    (the manifest's), a file of another size is a DataError: a local file's at once, a stream's
    when it reads past `size` or ends before it."""
    if is_remote(location):
        file = open_stream(str(location))
    else:
        file = open_regular(location, DataError, what)
        if size is not None and (actual := os.fstat(file.fileno()).st_size) != size:
            file.close()
            raise DataError(size_problem(actual, size))
    if size is None:
        return file
    return io.BufferedReader(_SizedReader(file, size), buffer_size=1 << 16)


def _amount(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit and limit % (1 << 20) == 0 else f"{limit} bytes"


def read_capped(location: Location, limit: int, what: str) -> bytes:
    """The whole file at `location` (a path or URL, opened by `open_file`), refused when it is
    larger than `limit` bytes."""
    # Read in chunks: one read(limit + 1) would allocate the whole cap for a small file.
    chunks: list[bytes] = []
    size = 0
    with open_file(location) as file:
        while chunk := file.read(min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise DataError(f"{location} is larger than the {_amount(limit)} a {what} may be")
    return data
