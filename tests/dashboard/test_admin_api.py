"""/admin/keys and /admin/audit over HTTP against the real server (keys required)."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from tests.dashboard.conftest import Dashboard


def _models(dashboard: Dashboard, key: str) -> httpx.Response:
    return httpx.get(dashboard.url("/v1/models"), headers={"authorization": f"Bearer {key}"}, timeout=10)


def test_create_list_use_and_revoke(dashboard: Dashboard) -> None:
    with dashboard.client() as admin:
        made = admin.post(
            "/admin/keys",
            json={"name": "api-made", "scopes": ["models"], "rpm": 100, "budget_usd": 2.5, "expires": "30d"},
        )
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        body = made.json()
        secret = body["key"]
        assert secret.startswith("ember-") and body["prefix"] == secret[:12]
        assert body["scopes"] == ["models"] and body["rpm"] == 100 and body["budget_usd"] == 2.5
        assert body["status"] == "active" and body["expires"] > body["created"]

        listed = admin.get("/admin/keys").json()["data"]
        row = next(k for k in listed if k["name"] == "api-made")
        assert "key" not in row and "hash" not in row  # the secret is shown once, in the create answer
        assert secret not in admin.get("/admin/keys").text

        assert _models(dashboard, secret).status_code == 200  # works on the next request
        chat = httpx.post(
            dashboard.url("/v1/chat/completions"),
            headers={"authorization": f"Bearer {secret}"},
            json={"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
        assert chat.status_code == 403 and "'chat' scope" in chat.json()["error"]["message"]

        revoked = admin.delete("/admin/keys/api-made")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        refused = _models(dashboard, secret)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        # Revoking again keeps the first date; POST .../revoke is the same action.
        again = admin.post("/admin/keys/api-made/revoke")
        assert again.status_code == 200 and again.json()["revoked"] == revoked.json()["revoked"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "missing required field 'name'"),
        ({"name": "bad name"}, "invalid key name"),
        ({"name": "x1", "scopes": ["root"]}, "unknown scope(s) root: use some of chat"),
        ({"name": "x1", "scopes": []}, "'scopes'"),
        ({"name": "x1", "rmp": 5}, "'rmp'"),  # a misspelt limit must not make an unlimited key
        ({"name": "x1", "rpm": 0}, "'rpm'"),
        ({"name": "x1", "budget_usd": -1}, "'budget_usd'"),
        ({"name": "x1", "budget_period": "week"}, "'budget_period'"),
        ({"name": "x1", "expires": "soon"}, "invalid --expires 'soon'"),
        ({"name": "x1", "expires": "2001-01-01"}, "is in the past"),
        ({"name": "x1", "expires": "99999999d"}, "after the year 9999"),
        ({"name": "x1", "expires": "9" * 400 + "d"}, "after the year 9999"),
        ({"name": "x1", "rpm": 2**70}, "'rpm'"),  # past SQLite's INTEGER
        ({"name": "x1", "budget_tokens": 2**63}, "'budget_tokens'"),
        ({"name": "x1" * 40}, "'name'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_create_refuses_bad_input(dashboard: Dashboard, body: object, says: str) -> None:
    with dashboard.client() as admin:
        answer = admin.post("/admin/keys", json=body)
        assert answer.status_code == 400, answer.text
        assert says in answer.json()["error"]
        assert all(k["name"] != "x1" for k in admin.get("/admin/keys").json()["data"])


def test_duplicate_unknown_and_scope(dashboard: Dashboard) -> None:
    with dashboard.client() as admin:
        assert admin.post("/admin/keys", json={"name": "twice"}).status_code == 201
        second = admin.post("/admin/keys", json={"name": "twice"})
        assert second.status_code == 409 and "already exists" in second.json()["error"]
        missing = admin.delete("/admin/keys/nobody")
        assert missing.status_code == 404 and missing.json()["error"] == "no key named 'nobody'"
        not_json = admin.post("/admin/keys", content=b"{name", headers={"content-type": "application/json"})
        assert not_json.status_code == 400
    with dashboard.client(dashboard.user_key) as user:
        for answer in (
            user.get("/admin/keys"),
            user.post("/admin/keys", json={"name": "sneak"}),
            user.get("/admin/audit"),
        ):
            assert answer.status_code == 403 and "'admin' scope" in answer.json()["error"]
    assert httpx.get(dashboard.url("/admin/keys")).status_code == 401


def test_audit_rows_and_verify(dashboard: Dashboard) -> None:
    with dashboard.client() as admin:
        assert admin.post("/admin/keys", json={"name": "audited"}).status_code == 201
        assert admin.delete("/admin/keys/audited").status_code == 200
        rows = admin.get("/admin/audit", params={"limit": 5}).json()
        assert len(rows["data"]) <= 5 and rows["total"] >= 2
        seqs = [r["seq"] for r in rows["data"]]
        assert seqs == sorted(seqs, reverse=True)  # newest first
        actions = [(r.get("action"), r.get("key"), r.get("detail", {}).get("name")) for r in rows["data"]]
        assert ("keys.revoke", "dash-admin", "audited") in actions
        assert ("keys.create", "dash-admin", "audited") in actions
        assert all("prompt" not in r for r in rows["data"])
        older = admin.get("/admin/audit", params={"limit": 2, "before": seqs[0]}).json()["data"]
        assert [r["seq"] for r in older] == list(range(seqs[0] - 1, 0, -1))[:2]

        for bad in ({"limit": 0}, {"limit": 5000}, {"limit": "many"}, {"before": 0}, {"before": 2**70}):
            answer = admin.get("/admin/audit", params=bad)
            assert answer.status_code == 400, answer.text
            assert next(iter(bad)) in answer.json()["error"]

        verdict = admin.post("/admin/audit/verify").json()
        assert verdict["ok"] is True and verdict["problems"] == [] and verdict["rows"] >= rows["total"]
        assert admin.get("/admin/audit/verify").json()["ok"] is True


def test_verify_names_an_edited_row(dashboard: Dashboard) -> None:
    """Edit a row behind the server's back: verify names it; put it back: intact again."""
    with dashboard.client() as admin:
        assert admin.post("/admin/keys", json={"name": "tampered"}).status_code == 201
        seq = admin.get("/admin/audit", params={"limit": 1}).json()["data"][0]["seq"]
        db = sqlite3.connect(dashboard.server.home / "state" / "audit.db")
        try:
            (original,) = db.execute("SELECT data FROM audit WHERE seq = ?", (seq,)).fetchone()
            with db:
                db.execute("UPDATE audit SET data = ? WHERE seq = ?", (original.replace("tampered", "innocent"), seq))
            verdict = admin.post("/admin/audit/verify").json()
            assert verdict["ok"] is False
            assert f"seq {seq}: edited (its hash does not match its contents)" in verdict["problems"]
        finally:
            with db:  # the session's server is shared: leave its chain whole
                db.execute("UPDATE audit SET data = ? WHERE seq = ?", (original, seq))
            db.close()
        assert admin.post("/admin/audit/verify").json()["ok"] is True
