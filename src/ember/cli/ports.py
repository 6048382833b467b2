"""Whether an address can be listened on, asked the way uvicorn will ask it."""

from __future__ import annotations

import socket


def bind_error(addr: str, port: int) -> OSError | None:
    """The error binding addr:port gives now, or None when it is free."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # uvicorn sets SO_REUSEADDR too: a port in TIME_WAIT is free for it, so for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            return exc
    return None
