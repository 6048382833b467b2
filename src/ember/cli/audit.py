"""`ember audit verify` and `ember audit tail`: read EMBER_HOME's audit.db directly, no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ember.config import Settings
from ember.guard import audit

audit_app = typer.Typer(help="Check and read the tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("verify")
def verify() -> None:
    """Walk the hash chain; name every edited, inserted or deleted row (exit 1 if any)."""
    db = audit.open_readonly(audit.audit_path(Settings()))
    try:
        count, problems = audit.verify(db)
    finally:
        db.close()
    if problems:
        for line in problems:
            print(line)
        raise typer.Exit(1)
    print(f"audit log intact: {count} rows")


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(row: audit.Row, fields: dict[str, Any], cipher: Any) -> str:
    who = fields.get("key") or "-"
    if fields.get("kind") == "admin":
        detail = fields.get("detail")
        what = f"admin {fields.get('action')} {audit.canonical(detail) if detail else ''}".rstrip()
    elif fields.get("kind") not in (None, "request"):  # an agent's tool call or run, and later kinds
        rest = {k: v for k, v in fields.items() if k not in ("kind", "ts", "key", "status")}
        what = f"{fields.get('kind')} {audit.canonical(rest)}"
    else:
        what = (
            f"{fields.get('endpoint')} model={fields.get('model')} route={fields.get('route') or '-'}"
            f" provider={fields.get('provider') or '-'} tokens={fields.get('tokens_in')}/"
            f"{fields.get('tokens_out')}"
        )
    text = f"{row.seq:>6} {_when(fields.get('ts'))} {who} {fields.get('status')} {what}"
    token = fields.get("prompt")
    if cipher is not None and isinstance(token, str):
        text += f" prompt={audit.decrypt_prompt(cipher, row.seq, token)}"
    elif token is not None:
        text += " prompt=<encrypted>"
    return text


@audit_app.command("tail")
def tail(
    n: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many of the newest rows.")] = 20,
    show_prompts: Annotated[bool, typer.Option("--show-prompts", help="Decrypt prompts with EMBER_AUDIT_KEY.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
) -> None:
    """Print the newest audit rows, oldest first."""
    settings = Settings()
    cipher = audit.AESGCM(audit.parse_key(settings.audit_key)) if show_prompts else None
    db = audit.open_readonly(audit.audit_path(settings))
    try:
        found = audit.tail(db, n)
    finally:
        db.close()
    for row in found:
        fields = row.fields() or {"data": row.data}
        if as_json:
            if cipher is not None and isinstance(fields.get("prompt"), str):
                fields["prompt"] = json.loads(audit.decrypt_prompt(cipher, row.seq, fields["prompt"]))
            print(json.dumps(fields, ensure_ascii=False))
        else:
            print(_line(row, fields, cipher))
