"""A loopback HTTP server for the tests that read datasets from a URL.

It serves one folder on 127.0.0.1 only, from a daemon thread, and stops when the test's `with`
block ends (or after `LIFETIME_S`, whichever comes first). `drops` makes it break connections: the
first `drops` requests for a file send half of it and close the socket, as a failing network does.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

#: a server never outlives this, even if a test hangs
LIFETIME_S = 300


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.drops_left > 0 and self.path.endswith(".tar"):
            self.server.drops_left -= 1
            path = Path(self.translate_path(self.path))
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection breaks mid-file
            self.close_connection = True
            return
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]
    drops_left: int


@contextlib.contextmanager
def serve(folder: Path, drops: int = 0) -> Iterator[_Server]:
    """Serve `folder` at http://127.0.0.1:PORT/ (the server's `url`) for the `with` block."""
    handler = functools.partial(_Handler, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    server.requests, server.drops_left = [], drops
    server.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = threading.Timer(LIFETIME_S, server.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield server
    finally:
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
