"""`ember serve` and `ember version`."""

from __future__ import annotations

import errno
import sys
from typing import Annotated, Any

import typer

from ember import __version__
from ember.cli.client import EmberClient, ServerUnreachable
from ember.cli.ports import bind_error
from ember.config import Settings
from ember.errors import EmberError


def _check_bindable(addr: str, port: int) -> None:
    """Fail with one clear line now, rather than with uvicorn's log and exit after startup."""
    exc = bind_error(addr, port)
    if exc is None:
        return
    if exc.errno == errno.EADDRINUSE:
        raise EmberError(
            f"{addr}:{port} is already in use (another `ember serve`?); "
            "choose another address with --host or EMBER_HOST"
        ) from exc
    raise EmberError(f"cannot listen on {addr}:{port}: {exc.strerror}") from exc


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on, e.g. 127.0.0.1:11434 or 0.0.0.0:8080.")
    ] = None,
    keep_alive: Annotated[
        str | None, typer.Option("--keep-alive", help="How long an idle model stays loaded, e.g. 5m, 1h, -1 (forever).")
    ] = None,
    max_loaded_models: Annotated[
        int | None, typer.Option("--max-loaded-models", help="Most models in memory at once; 0: no limit.")
    ] = None,
    num_parallel: Annotated[
        int | None, typer.Option("--num-parallel", help="Requests served at once per model.")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")] = None,
    join: Annotated[
        str | None, typer.Option("--join", help="Join a fleet: the Redis URL of its registry, e.g. redis://h:6379/0.")
    ] = None,
) -> None:
    """Start the server: the OpenAI API on /v1 and the Ollama API on /api."""
    flags: dict[str, Any] = {
        "host": host,
        "keep_alive": keep_alive,
        "max_loaded_models": max_loaded_models,
        "num_parallel": num_parallel,
        "log_level": log_level,
        "fleet_join": join,
    }
    # Only flags actually given override the environment and ember.toml.
    settings = Settings(**{key: value for key, value in flags.items() if value is not None})
    addr, port = settings.bind
    _check_bindable(addr, port)

    # Imported here: building the server is heavy and only this command needs it.
    import uvicorn

    from ember.app import build_app

    app = build_app(settings)
    print(f"ember {__version__} listening on {settings.base_url}", flush=True)
    config = uvicorn.Config(
        app, host=addr, port=port, log_level=settings.log_level.lower(), timeout_keep_alive=KEEP_ALIVE_SECONDS
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        # uvicorn has already logged why (a failed lifespan startup, a lost bind race).
        raise typer.Exit(1)


# How long an idle client connection is kept open. uvicorn's 5 s equals the idle expiry of the
# httpx pools inside the openai and anthropic SDKs, so a client could send on a connection at the
# moment ember closes it (the client sees a ReadError). Longer than common clients' pools (httpx 5 s,
# aiohttp 15 s, Go 90 s), the client always closes first.
KEEP_ALIVE_SECONDS = 100


def version() -> None:
    """Print ember's version, and the running server's if one answers."""
    print(f"ember version {__version__}")
    settings = Settings()
    try:
        with EmberClient.from_settings(settings) as client:
            print(f"server version {client.version()} at {settings.base_url}")
    except ServerUnreachable:
        print(f"Warning: no ember server is running at {settings.base_url}", file=sys.stderr)
