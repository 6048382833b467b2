"""A private ember server inside the CLI process, for `ember run` when none is running.

It is the real app on a loopback port, so the CLI keeps one code path (HTTP) whether the
server is its own or someone else's.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ember.config import Settings
from ember.errors import EmberError

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


def _loopback_socket() -> socket.socket:
    # Bound here and handed to uvicorn: no gap in which another process could take the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def local_server(settings: Settings) -> Iterator[str]:
    """Run build_app(settings) on a free loopback port; yields its base URL; stops it on exit."""
    # Imported here: the app pulls in the whole server, which only this path needs.
    from ember.app import build_app

    sock = _loopback_socket()
    port = sock.getsockname()[1]
    # Quiet logs: the user asked for an answer, not for server chatter.
    local = settings.model_copy(update={"host": f"127.0.0.1:{port}", "log_level": "warning"})
    server = uvicorn.Server(
        uvicorn.Config(build_app(local), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    # uvicorn only installs signal handlers on the main thread, so Ctrl-C still reaches the CLI.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ember-local-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise EmberError("the in-process ember server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise EmberError(f"the in-process ember server did not start within {_START_TIMEOUT:.0f}s")
            time.sleep(0.05)
        yield local.base_url
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        sock.close()
