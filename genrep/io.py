"""Crash-safe file writing (a file is visible under its name only once it is complete), and
reading files that may not be what their name says (a FIFO or a device never blocks or streams)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from genrep.errors import DataError, UserError


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_SUFFIX = ".tmp"


def tmp_path_for(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before its atomic rename.

    It names the host, process and thread, so writers never share one, and a later run can tell
    leftovers of dead writers from files that a live process is still writing (`remove_stale_tmp`).
    """
    path = Path(path)
    writer = f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"
    return path.with_name(f".{path.name}.{writer}{TMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in `folder` by writers of this host that are no longer running."""
    host = socket.gethostname()
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        parts = tmp.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
        if (
            len(parts) == 3
            and parts[0].endswith(f".{host}")
            and parts[1].isdigit()
            and parts[2].isdigit()
            and not _pid_alive(int(parts[1]))
        ):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def commit_tmp(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync `tmp`, rename it to `path` and fsync the folder, so `path` is complete or absent."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """An OSError raised in the block without a file name (a full disk while writing) names `path`."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, os.fspath(path)) from None
        raise


class HashingWriter:
    """A binary file that hashes (sha256) and counts what is written to it.

    A write after the file was closed is dropped: after an error (a full disk) the file is closed
    while tarfile's stream, when it is garbage-collected, still flushes its buffer into it.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        if not self.file.closed:
            self.file.write(data)
            self.digest.update(data)
            self.size += len(data)
        return len(data)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class StagedFile:
    """A file written under the hidden temporary name of `path` (`with staged as f:`, f hashes
    what is written), that appears under `path` only when committed; `discard` removes it if not.

    The commit is separate from the writing so that a writer that shares a folder can decide under
    a lock whether to keep it (`genrep.manifest.DatasetWriter`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.tmp = Path(path), tmp_path_for(path)
        self.sha256, self.size = "", 0

    def __enter__(self) -> BinaryIO:
        try:
            self._file = open(self.tmp, "wb")  # closed in __exit__
        except OSError as err:  # name the file the user asked for, not its temporary name
            raise OSError(err.errno, err.strerror, os.fspath(self.path)) from None
        self._writer = HashingWriter(self._file)
        return cast(BinaryIO, self._writer)  # a write-only binary file

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self.sha256, self.size = self._writer.hexdigest(), self._writer.size

    def commit(self) -> None:
        commit_tmp(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears under `path` only if the block completes."""
    staged = StagedFile(path)
    try:
        with naming(path):
            with staged as f:
                yield f
            staged.commit()
    finally:
        staged.discard()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` that leaves either the complete new file or the old one, never a partial one."""
    import torch  # here, so that importing genrep.io stays cheap

    with atomic_open(path) as f:
        torch.save(obj, f)


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike) -> Iterator[None]:
    """An exclusive inter-process lock held on `lock_file` (created if missing), for the processes
    that write one dataset folder or learn one cached walk file together."""
    from filelock import FileLock

    with FileLock(os.fspath(lock_file)):
        yield


def open_regular(
    path: str | os.PathLike, error: type[UserError] = DataError, what: str | None = None
) -> BinaryIO:
    """`path` opened for reading, if it is a regular file; anything else (a FIFO, whose open would
    wait for a writer forever, a device such as /dev/zero, a folder) is an `error`.

    The type is checked on the opened descriptor (opened without blocking), so the file cannot be
    swapped between the check and the read. `what` names the file in the error (default: its path).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device"
            raise error(f"{what or path} is a {kind}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
