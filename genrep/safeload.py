"""Loading `torch.save` files that someone else made, without ever running code from them.

Checkpoints, backbones, walk files and generator weights are read only through `load_tensors`:
`torch.load(weights_only=True)`, whose unpickler refuses every Python global that is not plain
data, and one clear line when a file is refused. torch's own message advises retrying with
`weights_only=False`; for a file from elsewhere that is the one thing never to do, so that advice
is dropped and the line names the global the file asked for instead.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from genrep.errors import CheckpointError, UserError, one_line
from genrep.io import open_regular

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(
    r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|Check the documentation|$)", re.S
)


#: bytes of a file scanned for the globals a pickle names (they come first in a pickle)
_SCANNED_BYTES = 1 << 20


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """The Python globals (module.name) that the pickle in `path` asks for, found by reading its
    opcodes (`pickletools`, which executes nothing); empty when it is not a pickle."""
    with open_regular(path) as handle:
        data = handle.read(_SCANNED_BYTES)
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif isinstance(arg, str):
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 (the end of what was read, or bytes that are no pickle)
        pass
    return found


def refusal_reason(err: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why torch refused or failed to read a file, in a few words (never torch's advice). A file
    that is a plain pickle rather than a torch.save archive is scanned for the global it names."""
    text = str(err)
    code = "which genrep never loads (such a file can run code)"
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            return f"it asks for the Python global {found.group(1)}, {code}"
        if path is not None and not zipfile.is_zipfile(path):
            names = pickle_globals(path)
            if names:
                return f"it is a pickle asking for the Python global {names[0]}, {code}"
            return "not a torch.save file"
        detail = _UNPICKLER_DETAIL.search(text)
        if detail:
            return f"not a tensors-only file ({one_line(detail.group(1))[:160]})"
        return "not a tensors-only file"
    if isinstance(err, (EOFError, zipfile.BadZipFile)) or "PytorchStreamReader" in text:
        return "truncated or not a torch.save file"
    return f"unreadable ({type(err).__name__}: {one_line(text)[:160]})"


def load_tensors(
    path: str | os.PathLike,
    *,
    what: str,
    advice: str,
    error: type[UserError] = CheckpointError,
    map_location: str | torch.device = "cpu",
    safe_globals: Iterable[Any] = (),
) -> Any:
    """`torch.load(path, weights_only=True)`; any failure is one `error` naming the file.

    `what` completes "PATH is not ..." (e.g. "a genrep-train checkpoint") and `advice` says what to
    pass instead. `safe_globals` are plain-data classes a known format carries (they are still
    rebuilt by the restricted unpickler, never called as code).
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path} does not exist; {advice}")
    try:  # a folder, FIFO or device is refused before torch waits on it or reads it forever
        open_regular(path, error).close()
    except UserError as err:
        raise error(f"{err}; {advice}") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter(
                "ignore"
            )  # torch warns about legacy formats; the error says it all
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a refused or corrupt file surfaces as many exception types
        raise error(f"{path} is not {what}: {refusal_reason(err, path)}; {advice}") from None


def load_safetensors(
    path: str | os.PathLike, *, what: str, advice: str, error: type[UserError] = CheckpointError
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a `.safetensors` file (a format that holds only
    tensors: nothing in it can run code); any failure is one `error` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; {advice}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # a corrupt header surfaces as several exception types
        raise error(
            f"{path} is not {what}: unreadable safetensors ({one_line(str(err))[:160]}); {advice}"
        ) from None


#: keys shown per kind of mismatch in a state-dict error
_SHOWN_KEYS = 4


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], shown: int = _SHOWN_KEYS
) -> str | None:
    """What keeps `state` from loading strictly where `expected` is a module's state dict: missing
    and unexpected keys and wrong shapes, `shown` of each, or None when it fits."""
    shapes = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and getattr(state[key], "shape", None) != value.shape
    ]
    problems = []
    for label, keys in (
        ("missing", [key for key in expected if key not in state]),
        ("unexpected", [key for key in state if key not in expected]),
        ("wrong shape", shapes),
    ):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            problems.append(f"{label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(problems) or None
