"""`ember keys create|list|revoke`: works on EMBER_HOME's key store directly, no server needed.

A running server sees the change on its next request (it watches SQLite's data_version).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from ember.config import Settings
from ember.guard.audit import append_admin
from ember.guard.keys import KeyRecord, KeyStore, parse_expires, parse_period, parse_scopes

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _store() -> KeyStore:
    return KeyStore(Settings().state_dir / "keys.db")


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name; usage and audit rows carry it.")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: chat, embed, models, admin, tools.")] = (
        "chat,embed,models"
    ),
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, help="Requests in flight at once.")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", min=0, help="USD to spend per --budget-period.")
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option("--budget-tokens", min=0, help="Tokens to use per --budget-period.")
    ] = None,
    budget_period: Annotated[str, typer.Option("--budget-period", help="day, month or total.")] = "month",
    expires: Annotated[str | None, typer.Option("--expires", help="e.g. 30d, 12h or 2026-12-31.")] = None,
) -> None:
    """Create a key and print it. It is shown this once: only its hash is kept."""
    period = parse_period(budget_period)
    store = _store()
    try:
        secret, _ = store.create(
            name,
            parse_scopes(scopes),
            rpm=rpm,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget_usd=budget_usd,
            budget_tokens=budget_tokens,
            budget_period=period,
            expires=parse_expires(expires) if expires else None,
        )
    finally:
        store.close()
    # The operator at the console acts as no key: the audit row says what, not who.
    append_admin(
        Settings(),
        "keys.create",
        None,
        {"name": name, "scopes": sorted(parse_scopes(scopes)), "rpm": rpm, "tpm": tpm, "budget_usd": budget_usd},
    )
    typer.echo(secret)
    typer.echo(f"Key '{name}' created. Store it now: it cannot be shown again.", err=True)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _limits(key: KeyRecord) -> str:
    parts = []
    if key.rpm is not None:
        parts.append(f"{key.rpm} rpm")
    if key.tpm is not None:
        parts.append(f"{key.tpm} tpm")
    if key.max_concurrent is not None:
        parts.append(f"{key.max_concurrent} concurrent")
    if key.budget_usd is not None:
        parts.append(f"${key.budget_usd:g}/{key.budget_period}")
    if key.budget_tokens is not None:
        parts.append(f"{key.budget_tokens} tokens/{key.budget_period}")
    return ", ".join(parts) or "-"


@keys_app.command("list")
def list_keys() -> None:
    """The keys (never the keys themselves): name, prefix, scopes, limits, dates."""
    from ember.cli.output import print_table

    store = _store()
    try:
        keys = store.list()
    finally:
        store.close()
    rows = [
        [
            k.name,
            k.prefix + "…",
            ",".join(sorted(k.scopes)),
            _limits(k),
            _when(k.created),
            _when(k.expires),
            _when(k.revoked),
        ]
        for k in keys
    ]
    print_table(["NAME", "PREFIX", "SCOPES", "LIMITS", "CREATED", "EXPIRES", "REVOKED"], rows)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: a running server refuses it from its next request."""
    store = _store()
    try:
        store.revoke(name)
    finally:
        store.close()
    append_admin(Settings(), "keys.revoke", None, {"name": name})
    typer.echo(f"Key '{name}' revoked.")
