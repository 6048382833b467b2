"""`ember routes` and `ember usage`: the gateway as an operator sees it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ember.cli.client import EmberClient, ServerUnreachable
from ember.cli.output import print_table
from ember.config import Settings
from ember.gateway.config import load_gateway_config
from ember.gateway.usage import GROUPS, GroupBy, UsageLog, day_start, summary


def routes(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each route, its strategy, its targets and their health."""
    settings = Settings()
    try:
        with EmberClient.from_settings(settings) as client:
            described = client.admin("routes")["routes"]
        live = True
    except ServerUnreachable:
        # No server: show what the config file says, without health.
        config = load_gateway_config(settings.config)
        described = [
            {
                "model": r.model,
                "strategy": r.strategy,
                "targets": [{"target": t, "state": "unknown"} for t in r.targets],
            }
            for r in config.routes
        ]
        live = False
    if as_json:
        print(json.dumps({"routes": described, "live": live}, indent=2))
        return
    if not described:
        print("no routes configured (add [[routes]] to ember.toml; its path goes in EMBER_CONFIG)")
        return
    rows: list[list[str]] = []
    for route in described:
        for i, target in enumerate(route["targets"]):
            rows.append(
                [
                    route["model"] if i == 0 else "",
                    route["strategy"] if i == 0 else "",
                    target["target"],
                    target.get("state", "?"),
                    _number(target.get("in_flight")),
                    _number(target.get("requests")),
                    _number(target.get("failures")),
                    _ms(target.get("ttft_ms")),
                    (target.get("last_error") or "")[:60],
                ]
            )
    print_table(
        ["ROUTE", "STRATEGY", "TARGET", "STATE", "IN FLIGHT", "REQUESTS", "FAILURES", "TTFT", "LAST ERROR"], rows
    )
    if not live:
        print("(the server is not running: health unknown)")


def usage(
    by: Annotated[str, typer.Option("--by", help="Group by day, model, route, key or provider.")] = "day",
    since: Annotated[str | None, typer.Option("--since", help="First day, YYYY-MM-DD (UTC).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Last day, YYYY-MM-DD (UTC), included.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, tokens and cost, totalled by day, model, route, key or provider."""
    group = next((g for g in GROUPS if g == by), None)
    if group is None:
        raise typer.BadParameter(f"{by!r} is not day, model, route, key or provider", param_hint="'--by'")
    settings = Settings()
    params = {k: v for k, v in (("by", by), ("since", since), ("until", until)) if v}
    try:
        with EmberClient.from_settings(settings) as client:
            result = client.admin("usage", params)
    except ServerUnreachable:
        result = _usage_from_disk(settings, group, since, until)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    rows = [
        [
            str(r[by] or "-"),
            str(r["requests"]),
            str(r["tokens_in"]),
            str(r["tokens_out"]),
            f"${r['cost']:.6f}",
            str(r["errors"]),
            f"{r['avg_latency_ms']:.0f} ms",
        ]
        for r in result["rows"]
    ]
    total = result["total"]
    rows.append(
        [
            "TOTAL",
            str(total["requests"]),
            str(total["tokens_in"]),
            str(total["tokens_out"]),
            f"${total['cost']:.6f}",
            str(total["errors"]),
            "",
        ]
    )
    print_table([by.upper(), "REQUESTS", "TOKENS IN", "TOKENS OUT", "COST", "ERRORS", "AVG LATENCY"], rows)


def _usage_from_disk(settings: Settings, by: GroupBy, since: str | None, until: str | None) -> dict[str, Any]:
    path = settings.state_dir / "usage.db"
    if not path.exists():
        return summary(by, [])
    log = UsageLog(path)
    try:
        try:
            start = day_start(since) if since else None
            end = day_start(until) + 86400 if until else None
        except ValueError:
            raise typer.BadParameter("--since and --until take days written YYYY-MM-DD") from None
        rows = log.totals(by, since=start, until=end)
    finally:
        log.close()
    return summary(by, rows)


def _number(value: Any) -> str:
    return "-" if value is None else str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"
