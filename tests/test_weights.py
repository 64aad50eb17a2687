"""Weights resolution (--weights, cache, checked download) and loading without running code."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from genrep.errors import WeightsError
from genrep.paths import genrep_home, weights_dir
from genrep.weights import (
    WeightsSpec,
    load_restricted_pickle,
    load_state_dict_file,
    resolve_weights,
)

PAYLOAD = b"pretend these are weights" * 100


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GENREP_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.bin").write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _spec(url: str, sha256: str | None = hashlib.sha256(PAYLOAD).hexdigest()) -> WeightsSpec:
    return WeightsSpec("model.bin", (url,), sha256)


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.bin"


def test_home_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("GENREP_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert genrep_home() == tmp_path / "xdg" / "genrep"
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "mine"))
    assert weights_dir() == tmp_path / "mine" / "weights"


def test_download_over_http_is_checked_cached_and_reused(home, server):
    spec = _spec(f"{server}/model.bin")
    resolved = resolve_weights(spec, None, model="toy")
    assert resolved.path == home / "weights" / "model.bin"
    assert resolved.path.read_bytes() == PAYLOAD
    assert resolved.sha256 == spec.sha256
    assert os.listdir(home / "weights") == ["model.bin"]  # no temp file left behind
    # The second resolution reads the cache: its only URL is unreachable.
    again = resolve_weights(
        WeightsSpec("model.bin", (_closed_port_url(),), spec.sha256), None, model="toy"
    )
    assert again == resolved


def test_wrong_checksum_download_is_rejected_and_not_cached(home, server):
    spec = _spec(f"{server}/model.bin", sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec, None, model="toy")
    message = str(err.value)
    assert "expected " + "0" * 64 in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "\n" not in message
    assert not (home / "weights" / "model.bin").exists()
    assert list((home / "weights").iterdir()) == []


def test_mirrors_are_tried_in_order(home, server):
    spec = WeightsSpec(
        "model.bin",
        (_closed_port_url(), f"{server}/missing.bin", f"{server}/model.bin"),
        hashlib.sha256(PAYLOAD).hexdigest(),
    )
    assert resolve_weights(spec, None, model="toy").path.read_bytes() == PAYLOAD


def test_file_url_download(home, tmp_path):
    source = tmp_path / "published.bin"
    source.write_bytes(PAYLOAD)
    resolved = resolve_weights(_spec(source.as_uri()), None, model="toy")
    assert resolved.path.read_bytes() == PAYLOAD


def test_offline_without_cache_names_file_url_and_destination(home):
    url = _closed_port_url()
    with pytest.raises(WeightsError) as err:
        resolve_weights(_spec(url), None, model="biggan-deep-128")
    message = str(err.value)
    assert "\n" not in message
    assert "model.bin" in message and url in message
    assert str(home / "weights" / "model.bin") in message and "--weights" in message


def test_genrep_offline_forbids_downloads(home, server, monkeypatch):
    monkeypatch.setenv("GENREP_OFFLINE", "1")
    with pytest.raises(WeightsError, match="GENREP_OFFLINE"):
        resolve_weights(_spec(f"{server}/model.bin"), None, model="toy")
    assert not (home / "weights" / "model.bin").exists()


def test_explicit_weights_file_or_folder_wins(home, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"local")
    spec = _spec(_closed_port_url())
    by_folder = resolve_weights(spec, str(folder), model="toy")
    by_file = resolve_weights(spec, folder / "model.bin", model="toy")
    assert by_folder.path == by_file.path == folder / "model.bin"
    assert by_file.sha256 == hashlib.sha256(b"local").hexdigest()  # a user's file is not pinned
    with pytest.raises(WeightsError, match="no file"):
        resolve_weights(spec, str(tmp_path / "absent.bin"), model="toy")
    with pytest.raises(WeightsError, match="model.bin"):
        resolve_weights(spec, str(tmp_path), model="toy")  # folder without the expected file


def test_corrupt_cached_file_is_reported(home):
    cached = home / "weights" / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="delete it"):
        resolve_weights(_spec(_closed_port_url()), None, model="toy")


def test_no_published_weights_needs_weights_flag(home):
    with pytest.raises(WeightsError, match="--weights"):
        resolve_weights(None, None, model="stylegan2")


class _Payload:
    """Unpickling this runs `touch MARKER` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_state_dict_loader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="tensors-only"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Payload(marker)}))
    with pytest.raises(WeightsError) as err:
        load_restricted_pickle(path)
    assert "system" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_loads_tensors_and_numbers(tmp_path):
    import collections

    import numpy as np

    data = collections.OrderedDict(
        w=torch.nn.Parameter(torch.arange(6.0).view(2, 3)),
        view=torch.arange(5.0)[2:],
        gain=np.float64(0.5),
        ids={1, 2},
    )
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = load_restricted_pickle(path)
        assert torch.equal(loaded["w"], data["w"]) and isinstance(loaded["w"], torch.nn.Parameter)
        assert torch.equal(loaded["view"], torch.tensor([2.0, 3.0, 4.0]))
        assert loaded["gain"] == 0.5 and loaded["ids"] == {1, 2}
