"""Reading files at a URL: streams that survive broken connections, then one line; pipe: safety."""

from __future__ import annotations

import socket

import click
import pytest
from click.testing import CliRunner
from http_helpers import serve

from genrep import remote
from genrep.errors import Command, NetworkError, UsageError


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(bytes(range(256)) * 4000)
    return tmp_path


def test_a_broken_stream_is_resumed_where_it_broke(files):
    expected = (files / "shard-000000.tar").read_bytes()
    with serve(files, drops=2) as server:
        with remote.open_stream(f"{server.url}/shard-000000.tar") as stream:
            assert stream.read() == expected
        assert server.requests.count("/shard-000000.tar") == 3


def test_a_network_that_stays_down_is_one_line(files):
    with serve(files, drops=100) as server:
        url = f"{server.url}/shard-000000.tar"
        with pytest.raises(NetworkError) as caught, remote.open_stream(url) as stream:
            stream.read()
        assert remote.RETRIES < len(server.requests) <= remote.RETRIES + 2  # bounded
    message = str(caught.value)
    assert (
        "\n" not in message and url in message and f"after {remote.RETRIES + 1} attempts" in message
    )


def test_a_refused_connection_says_what_failed(unused_port):
    url = f"http://127.0.0.1:{unused_port}/ds/manifest.json"
    with pytest.raises(NetworkError) as caught:
        remote.open_stream(url)
    message = str(caught.value)
    assert message.count(url) == 1 and "after" in message and "\n" not in message


@pytest.fixture
def unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_missing_file_is_not_retried(files):
    with serve(files) as server:
        with pytest.raises(FileNotFoundError):
            remote.open_stream(f"{server.url}/manifest.json")
        assert len(server.requests) == 1


def test_memory_and_file_urls_go_through_fsspec(files):
    import fsspec

    fsspec.filesystem("memory").pipe("/ds/a.bin", b"hello")
    assert remote.read_capped("memory://ds/a.bin", 100, "file") == b"hello"
    assert remote.read_capped((files / "shard-000000.tar").as_uri(), 2_000_000, "file")[
        :3
    ] == bytes(range(3))
    with pytest.raises(Exception, match="larger than 3 bytes"):
        remote.read_capped("memory://ds/a.bin", 3, "manifest")


def test_pipe_commands_read_their_output(files):
    location = f"pipe:cat {files}/{{}}"
    assert remote.join(location, "shard-000000.tar") == f"pipe:cat {files}/shard-000000.tar"
    with remote.open_stream(remote.join(location, "shard-000000.tar")) as stream:
        assert stream.read() == (files / "shard-000000.tar").read_bytes()
    with pytest.raises(UsageError, match="needs {}"):
        remote.join("pipe:cat x", "manifest.json")


def test_pipe_only_from_the_command_line(tmp_path):
    @click.command(cls=Command)
    @click.option("--config-default", is_flag=True)
    @click.argument("where", callback=remote.check_typed, required=False)
    def show(config_default, where):
        click.echo(where)

    typed = CliRunner().invoke(show, ["pipe:cat {}"])
    assert typed.exit_code == 0 and "pipe:cat {}" in typed.output
    from_file = CliRunner().invoke(show, [], default_map={"where": "pipe:rm -rf {}"})
    assert from_file.exit_code == 2 and "typed on the command line" in from_file.output


def test_unknown_protocols_say_which_extra():
    with pytest.raises(UsageError, match=r"cannot read nosuchproto://"):
        remote.open_stream("nosuchproto://bucket/ds/manifest.json")
