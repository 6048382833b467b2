"""`ember pull` and `ember import`: through the server when it runs, else straight into the store.

`make run` pulls before any server is up, so a pull must also work with none.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ember.cli.client import EmberClient, ServerUnreachable
from ember.cli.output import PullEvent, pull_view
from ember.config import Settings
from ember.errors import EmberError

if TYPE_CHECKING:
    from ember.runtime.store import ModelStore


def _open_store(settings: Settings) -> ModelStore:
    # Imported here: the store pulls in gguf and numpy, which most commands never need.
    from ember.runtime.store import ModelStore

    return ModelStore(settings.home, hf_endpoint=settings.hf_endpoint)


def pull_via_server(client: EmberClient, source: str, *, destination: str | None, stream: TextIO) -> None:
    """Stream the server's pull progress to `stream`; raises ServerUnreachable before any output."""
    events = client.pull(source, destination=destination)
    first = next(events, None)  # connecting happens here: fail before drawing any bar
    if first is None:
        return
    with pull_view(stream) as view:
        view.update(PullEvent.from_any(first))
        for event in events:
            view.update(PullEvent.from_any(event))


def pull_locally(settings: Settings, source: str, *, destination: str | None, stream: TextIO) -> str:
    """Pull into the local store in this process; returns the stored model's name."""
    store = _open_store(settings)
    cancel = threading.Event()
    with pull_view(stream) as view:

        def report(progress: Any) -> None:
            view.update(PullEvent.from_any(progress))

        # The download runs in a worker so Ctrl-C reaches this thread at once and can ask the
        # store to stop cleanly (keeping the partial file for a resume) instead of killing it mid-write.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-pull") as pool:
            future = pool.submit(store.pull, source, name=destination, progress=report, cancel=cancel)
            try:
                record = future.result()
            except KeyboardInterrupt:
                cancel.set()
                raise
        view.update(PullEvent(status="success"))
    return str(record.ref)


def pull(
    source: Annotated[
        str, typer.Argument(help="Catalog name (smollm2:135m), hf://org/repo/file.gguf or an https:// URL.")
    ],
    name: Annotated[str | None, typer.Option("--name", help="Store the model under this name.")] = None,
) -> None:
    """Download a model into the local store."""
    settings = Settings()
    with EmberClient.from_settings(settings) as client:
        try:
            pull_via_server(client, source, destination=name, stream=sys.stdout)
            return
        except ServerUnreachable:
            pass
    print(f"ember is not running at {settings.base_url}: pulling into {settings.home}", file=sys.stderr)
    pull_locally(settings, source, destination=name, stream=sys.stdout)


def import_model(
    path: Annotated[Path, typer.Argument(help="A GGUF file on this machine.")],
    name: Annotated[str, typer.Option("--name", help="Name to store the model under, e.g. mymodel:q4.")],
) -> None:
    """Copy a local GGUF file into the store under NAME (no server needed)."""
    if not path.is_file():
        raise EmberError(f"{path}: no such file")
    record = _open_store(Settings()).import_file(path, name)
    print(f"imported {path} as {record.ref}")
