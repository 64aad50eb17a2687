"""What the hostile-input tests build: raw tars, PNG headers, manifest edits, one-line checks."""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from genrep.io import sha256_file


def cli(command: Any, *args: Any):
    """Run a click command in-process with string arguments; returns click's result."""
    return CliRunner().invoke(command, [str(a) for a in args])


def only_line(result, exit_code: int) -> str:
    """The output of a refused command: exactly one `Error:` line (no traceback, no usage
    preamble, no warning), with `exit_code`."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == exit_code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def refused(result, exit_code: int) -> str:
    """The one `Error:` line of a refused command: no traceback, and nothing else but warnings and
    click's usage preamble (which only a flag that click itself cannot parse gets)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == exit_code, result.output
    errors = [line for line in lines if line.startswith("Error: ")]
    allowed = ("Error: ", "Usage: ", "Try ", "warning: ")
    others = [line for line in lines if not line.startswith(allowed)]
    assert len(errors) == 1 and not others, result.output
    return errors[0]


def tar_bytes(members: list[tuple[str, bytes]], format: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar of `members` (pax `format` for names longer than ustar's 256 bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is width x height (its header) with no pixel data: a decoder that
    believed it would allocate width x height x 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(data))


def replace_shard(folder: Path, name: str, data: bytes, record: bool = True) -> None:
    """Put `data` in shard `name`; with `record`, its manifest entry gets its size and sha256 (a
    damaged dataset whose manifest agrees with its bytes)."""
    (folder / name).write_bytes(data)
    if record:
        edited = manifest(folder)
        for entry in edited["shards"]:
            if entry["name"] == name:
                entry.update(bytes=len(data), sha256=sha256_file(folder / name))
        write_manifest(folder, edited)


def noise(size: int) -> bytes:
    """`size` bytes that are no format, the same in every run (a failure replays)."""
    return random.Random(size).randbytes(size)
