"""Where a generator's weights come from, and loading them without running code from them.

Resolution order: `--weights PATH` (a file, or a folder holding the expected file name) -> the cache
folder `$GENREP_HOME/weights` (default `~/.cache/genrep`, or `$XDG_CACHE_HOME/genrep`) -> a download
from the published location, checked against its pinned sha256 before it enters the cache. With no
file and no network the error names the file, its URL and where to put it.

Checkpoints are data: state dicts load with `torch.load(weights_only=True)`, and the NVIDIA `.pkl`
snapshots (arbitrary pickles by design) go through `load_restricted_pickle`, whose allow-list maps
every permitted global to a data-only stand-in and refuses any other.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import pickle
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from genrep.errors import WeightsError
from genrep.io import commit_tmp, open_regular, sha256_file, tmp_path_for
from genrep.paths import weights_dir
from genrep.safeload import load_tensors

DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSpec:
    """A published weights file: its cache name, download locations (mirrors in order) and sha256.

    `sha256=None` means the publisher gave no checksum we could pin: the download is accepted and
    its sha256 recorded in the dataset manifest like any other.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str


def downloads_disabled() -> bool:
    """`GENREP_OFFLINE=1` forbids downloads (clusters without network, reproducible runs)."""
    return os.environ.get("GENREP_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def resolve_weights(
    spec: WeightsSpec | None, weights: str | os.PathLike | None, *, model: str
) -> ResolvedWeights:
    """The weights file for `model`: `weights` if given, else the cache, else a download."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            if spec is None:
                raise WeightsError(
                    f"--weights {path} is a folder; {model} needs the checkpoint "
                    "file itself (a .pt, .pth or .pkl)"
                )
            path = path / spec.filename
        if not path.exists():
            raise WeightsError(f"--weights: no file {path} (for {model})")
        return ResolvedWeights(path, sha256_file(path))  # a FIFO or device is refused
    if spec is None:
        raise WeightsError(f"{model} has no published weights to download: pass --weights FILE")
    cached = weights_dir() / spec.filename
    if cached.is_file():
        digest = sha256_file(cached)
        if spec.sha256 is not None and digest != spec.sha256:
            raise WeightsError(
                f"cached {cached} has sha256 {digest}, expected {spec.sha256}; "
                f"delete it so it is downloaded again from {spec.urls[0]}"
            )
        return ResolvedWeights(cached, digest)
    return ResolvedWeights(cached, download(spec, cached, model=model))


def download(spec: WeightsSpec, dest: Path, *, model: str) -> str:
    """Fetch `spec` into `dest` (atomically, after its checksum matched); returns its sha256."""
    where = f"put it at {dest} or pass --weights FILE"
    if downloads_disabled():
        raise WeightsError(
            f"{model} weights {spec.filename} are not cached and GENREP_OFFLINE is "
            f"set: download {spec.urls[0]} and {where}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in spec.urls:
        tmp = tmp_path_for(dest)
        try:
            digest = _fetch(url, tmp)
            if spec.sha256 is not None and digest != spec.sha256:
                failures.append(f"{url} gave sha256 {digest}, expected {spec.sha256}")
                continue
            commit_tmp(tmp, dest)
            return digest
        except (urllib.error.URLError, OSError, ValueError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', err)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise WeightsError(
        f"cannot fetch {model} weights {spec.filename} ({'; '.join(failures)}): "
        f"download {spec.urls[0]} and {where}"
    )


def _fetch(url: str, tmp: Path) -> str:
    """Stream `url` into `tmp`, hashing as it goes; returns the sha256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "genrep"})
    with (
        urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
        open(tmp, "wb") as out,
    ):
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=tmp.name.split(".tmp")[0],
            disable=None,
            leave=False,
        ) as bar:
            while block := response.read(_CHUNK):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
        if total is not None and out.tell() != total:
            raise ValueError(f"truncated download ({out.tell()} of {total} bytes)")
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """A generator's state dict, read with `weights_only=True` on the CPU; one line for anything else."""
    data = load_tensors(
        path,
        what="a tensors-only PyTorch checkpoint",
        advice="pass the published weights file",
        error=WeightsError,
        # rosinality training checkpoints carry their argparse.Namespace of options: plain data.
        safe_globals=[argparse.Namespace],
    )
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path} holds a {type(data).__name__}, not a state dict")
    return dict(data)


# --- NVIDIA .pkl snapshots ------------------------------------------------------------------
#
# A stylegan2-ada-pytorch snapshot pickles `torch_utils.persistence` objects whose reconstruction
# exec()s Python source stored in the file. Here that global maps to `PersistentObject`, which keeps
# the class name and the pickled state as data and never looks at the source. Tensors are pickled
# as nested torch.save archives; those are opened with weights_only=True.


@dataclass
class PersistentObject:
    """A `torch_utils.persistence` object, as data: its class name and pickled `__dict__`."""

    class_name: str
    state: dict[str, Any]


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise WeightsError("unsupported torch_utils.persistence record in the pickle")
    state = meta.get("state")
    return PersistentObject(str(meta.get("class_name")), state if isinstance(state, dict) else {})


def _load_storage_bytes(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on legacy formats: the error says it all
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes; nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise WeightsError("unexpected _codecs.encode call in the pickle")
    return text.encode("latin1")


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict (its attribute access is not needed here)."""


def _rebuild_tensor_v2(
    storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
    if hooks:
        raise WeightsError("the pickle attaches hooks to a tensor")
    return torch._utils._rebuild_tensor_v2(
        storage, offset, size, stride, requires_grad, collections.OrderedDict(), metadata
    )


def _rebuild_parameter(data, requires_grad, hooks):
    if hooks:
        raise WeightsError("the pickle attaches hooks to a parameter")
    return torch.nn.Parameter(data, requires_grad)


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> Any:
    import numpy as np

    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in "biuf":
        raise WeightsError(f"the pickle holds a numpy {dtype} value; only numbers are loaded")
    return dtype


def _numpy_scalar(dtype: Any, data: bytes) -> Any:
    """numpy scalars (the layers' gains are np.float64) from their raw bytes."""
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise WeightsError("the pickle holds a numpy scalar that is not a number")
    return np.frombuffer(data, dtype)[0]


#: (module, name) in a stylegan2-ada-pytorch snapshot -> the data-only callable used for it
NVIDIA_PICKLE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # pickled by numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # pickled by numpy 2.x
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self, file, allowed: Mapping[tuple[str, str], Callable[..., Any]], source: str
    ) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 name, written by protocol-2 pickles
            module = "builtins"
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._source} names the global {module}.{name}, which genrep "
                "does not load (only network snapshots are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsError(f"{self._source} uses pickle persistent ids, which genrep does not load")


#: the first bytes of a zip archive (a torch.save file)
ZIP_MAGIC = b"PK\x03\x04"


def load_restricted_pickle(
    path: str | os.PathLike,
    allowed: Mapping[tuple[str, str], Callable[..., Any]] = NVIDIA_PICKLE_GLOBALS,
) -> Any:
    """Unpickle `path` allowing only the globals of `allowed` (mapped to their stand-ins)."""
    with open_regular(path, WeightsError) as f:
        if cast(io.BufferedReader, f).peek(4)[:4] == ZIP_MAGIC:
            raise WeightsError(
                f"{path} is a torch.save archive, not a pickled network snapshot: name it .pt "
                "(a state dict), or pass the .pkl snapshot"
            )
        try:
            return _RestrictedUnpickler(f, allowed, str(path)).load()
        except WeightsError:
            raise
        except Exception as err:  # a corrupt pickle, whatever the parser says
            raise WeightsError(
                f"{path} is not a readable pickle ({type(err).__name__}: {err})"
            ) from None
