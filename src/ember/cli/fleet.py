"""`ember fleet nodes`: the fleet as the running server sees it (GET /admin/fleet)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ember.cli.client import EmberClient, ServerError
from ember.cli.output import print_table
from ember.config import Settings
from ember.errors import EmberError

fleet_app = typer.Typer(help="The fleet this server belongs to.", no_args_is_help=True)


@fleet_app.command("id")
def node_id() -> None:
    """This node's id and public key (made in EMBER_HOME on first use), for a fleet's allowlist."""
    from ember.fleet.identity import load_or_create

    identity = load_or_create(Settings().home)
    print(f"node id     {identity.node_id}")
    print(f"public key  {identity.public_key_b64}")


@fleet_app.command("nodes")
def nodes(
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON instead of a table.")] = False,
) -> None:
    """Each node: labels, models (resident marked *), load and last heartbeat."""
    settings = Settings()
    try:
        with EmberClient.from_settings(settings) as client:
            fleet = client.admin("fleet")
    except ServerError as exc:
        if exc.status_code in (401, 403):
            raise EmberError(
                f"ember at {settings.base_url} refused GET /admin/fleet ({exc.message}): "
                "set EMBER_API_KEY to a key with the admin scope"
            ) from exc
        raise
    if as_json:
        print(json.dumps(fleet, indent=2))
        return
    if not fleet.get("configured"):
        print("this server is in no fleet (start it with `ember serve --join REDIS_URL` or add [fleet] to ember.toml)")
        return
    rows = [_row(node) for node in fleet.get("nodes", [])]
    if rows:
        print_table(["NODE", "NAME", "KIND", "URL", "LABELS", "MODELS", "LOAD", "TOK/S", "LAST SEEN"], rows)
    else:
        print("no live nodes")
    for down in fleet.get("down", []):
        print(f"down: {down['name']}: {down['error']}")
    refused = fleet.get("refused", [])
    if refused:
        print(f"refused records: {len(refused)} (see `ember fleet nodes --json`)")


def _row(node: dict[str, Any]) -> list[str]:
    load = node.get("load", {})
    resident = set(node.get("resident", []))
    models = ", ".join(m + ("*" if m in resident else "") for m in node.get("stored", []))
    labels = ",".join(f"{k}={v}" for k, v in sorted(node.get("labels", {}).items()))
    slots = load.get("slots") or "?"
    rate = load.get("tokens_per_s")
    name = node.get("name", "") + (" (this)" if node.get("self") else "")
    return [
        node.get("short_id", ""),
        name,
        node.get("kind", ""),
        node.get("base_url", ""),
        labels or "-",
        models or "-",
        f"{load.get('busy', 0)}/{slots} busy, {load.get('queue', 0)} queued",
        "-" if rate is None else f"{rate:g}",
        f"{node.get('age_s', 0):.1f} s ago",
    ]
