"""`ember approvals list | show ID | approve ID | deny ID [--reason TEXT]`: agent tool calls
that wait for a human, through the running server's /admin/approvals (api/approvals_routes.py).

A decision taken here is kept by the server until the client's follow-up request resumes the
run. On a server that requires keys, EMBER_API_KEY must hold a key with the `admin` scope.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ember.cli.client import EmberClient
from ember.cli.output import print_table, relative_time
from ember.config import Settings

approvals_app = typer.Typer(
    help="Agent tool calls waiting for a human: list them, approve or deny them.", no_args_is_help=True
)

_Id = Annotated[str, typer.Argument(help="The approval's id (apr_…), as `ember approvals list` shows it.")]
_Reason = Annotated[str | None, typer.Option("--reason", help="Why; kept with the decision and in the audit log.")]
_ARGUMENTS_WIDTH = 60


def _client() -> EmberClient:
    return EmberClient.from_settings(Settings())


def _ago(ts: Any) -> str:
    return relative_time(datetime.fromtimestamp(ts, UTC)) if isinstance(ts, (int, float)) else "-"


def _short(text: str, width: int = _ARGUMENTS_WIDTH) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


@approvals_app.command("list")
def list_approvals(
    status: Annotated[str, typer.Option("--status", help="pending, approved, denied or all.")] = "pending",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 100,
) -> None:
    """Approvals, newest first (pending ones unless --status says otherwise)."""
    with _client() as client:
        page = client.call("GET", "/admin/approvals", params={"status": status, "limit": limit})
    rows = [
        [a["id"], a["status"], a["agent"], a["tool"], _short(a["arguments"]), _ago(a["created_at"])]
        for a in page.get("data") or []
    ]
    if not rows:
        typer.echo(f"no {'' if status == 'all' else status + ' '}approvals")
        return
    print_table(["ID", "STATUS", "AGENT", "TOOL", "ARGUMENTS", "CREATED"], rows)


@approvals_app.command("show")
def show(approval_id: _Id) -> None:
    """One approval as JSON: its run, tool, arguments and decision."""
    with _client() as client:
        approval = client.call("GET", f"/admin/approvals/{approval_id}")
    typer.echo(json.dumps(approval, indent=2, ensure_ascii=False))


def _decide(approval_id: str, approve: bool, reason: str | None) -> None:
    with _client() as client:
        approval = client.call(
            "POST", f"/admin/approvals/{approval_id}", json_body={"approve": approve, "reason": reason}
        )
    because = f" ({approval['reason']})" if approval.get("reason") else ""
    typer.echo(f"{approval['id']} {approval['status']}{because}: {approval['tool']} {_short(approval['arguments'])}")


@approvals_app.command("approve")
def approve(approval_id: _Id, reason: _Reason = None) -> None:
    """Let the tool call run when the client's follow-up request resumes the run."""
    _decide(approval_id, True, reason)


@approvals_app.command("deny")
def deny(approval_id: _Id, reason: _Reason = None) -> None:
    """Refuse the tool call: the run ends with a message saying so (and the reason)."""
    _decide(approval_id, False, reason)
