"""Crash-safe file writing: a file is visible under its name only once it is complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_SUFFIX = ".tmp"


def tmp_path_for(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before its atomic rename.

    It names the host and process, so a later run can tell leftovers of dead writers from files
    that a live process is still writing (`remove_stale_tmp`).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TMP_SUFFIX}")


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
            and parts[1] == host
            and parts[2].isdigit()
            and not _pid_alive(int(parts[2]))
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
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears under `path` only if the block completes."""
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            yield f
        commit_tmp(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
