"""Crash-safe file writing: a file is visible under its name only once it is complete."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path_for(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before its atomic rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def commit_tmp(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync `tmp`, rename it to `path` and fsync the folder, so `path` is complete or absent."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    tmp = tmp_path_for(path)
    try:
        tmp.write_bytes(data)
        commit_tmp(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
