"""The dashboard in headless Debian chromium against the real server (keys required).

Every page loads with no console error or uncaught exception (the `ui` fixture fails the test
otherwise) and no error banner; a screenshot of each is saved. Then each page's own job: keys
created (the secret shown once) and revoked, the audit chain verified, routes with breaker state,
usage charts and table, batches with a download, approvals; the key prompt, the admin-scope
notice, a phone-width viewport and the dark theme.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from tests.dashboard.conftest import AGENT, ConsoleErrors, Dashboard, UiPage

PAGES = ["overview", "models", "chat", "routes", "usage", "keys", "audit", "batches", "approvals"]

pytestmark = pytest.mark.slow


def _loaded(ui: UiPage, page_id: str) -> None:
    """The page's module has drawn (its h1) and its first requests have answered."""
    body = ui.page.locator(f'#page [data-page="{page_id}"]')
    expect(body.locator("h1").first).to_be_visible()
    ui.page.wait_for_load_state("networkidle")
    expect(ui.page.get_by_test_id("error-banner")).to_be_hidden()


@pytest.mark.parametrize("page_id", PAGES)
def test_every_page_loads_without_errors(ui: UiPage, page_id: str) -> None:
    ui.open(f"#/{page_id}")
    _loaded(ui, page_id)
    expect(ui.page.get_by_test_id(f"nav-{page_id}")).to_have_class(re.compile(r"\bactive\b"))
    ui.shot(f"page-{page_id}")


def test_keys_create_shows_secret_once_then_revoke(ui: UiPage, dashboard: Dashboard) -> None:
    ui.open("#/keys")
    _loaded(ui, "keys")
    page = ui.page
    page.get_by_test_id("key-name").fill("browser-made")
    page.get_by_test_id("key-scope-embed").uncheck()
    page.get_by_test_id("key-rpm").fill("30")
    page.get_by_test_id("key-budget-usd").fill("1.5")
    page.get_by_test_id("key-expires").fill("30d")
    page.get_by_test_id("key-create").click()
    secret = page.get_by_test_id("key-secret")
    expect(secret).to_have_text(re.compile(r"^ember-\S{40}$"))
    value = secret.inner_text()
    ui.shot("keys-created")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=dashboard.url(""))
    page.get_by_test_id("key-copy").click()
    expect(page.get_by_text("copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == value
    row = page.locator('tr[data-key="browser-made"]')
    expect(row).to_contain_text("chat, models")
    expect(row).to_contain_text("30 rpm")
    expect(row).to_contain_text("$1.50/month")
    expect(page.get_by_test_id("key-status-browser-made")).to_have_text("active")
    assert httpx.get(dashboard.url("/v1/models"), headers={"authorization": f"Bearer {value}"}).status_code == 200

    page.get_by_test_id("key-secret-close").click()
    expect(page.get_by_test_id("key-secret")).to_have_count(0)
    page.reload()
    _loaded(ui, "keys")
    assert value not in page.content()  # shown once: not in the list, not after a reload

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("key-revoke-browser-made").click()
    expect(page.get_by_test_id("key-status-browser-made")).to_have_text("revoked")
    expect(page.get_by_test_id("key-revoke-browser-made")).to_have_count(0)
    assert httpx.get(dashboard.url("/v1/models"), headers={"authorization": f"Bearer {value}"}).status_code == 401


def test_keys_bad_input_is_shown_in_the_page(ui: UiPage) -> None:
    ui.console.allow("400", "409")
    ui.open("#/keys")
    _loaded(ui, "keys")
    ui.page.get_by_test_id("key-name").fill("dash-admin")  # taken
    ui.page.get_by_test_id("key-create").click()
    expect(ui.page.get_by_test_id("error-banner")).to_contain_text("a key named 'dash-admin' already exists")
    ui.page.get_by_test_id("key-name").fill("fine-name")
    ui.page.get_by_test_id("key-expires").fill("someday")
    ui.page.get_by_test_id("key-create").click()
    expect(ui.page.get_by_test_id("error-banner")).to_contain_text("invalid --expires 'someday'")
    expect(ui.page.get_by_test_id("key-secret")).to_have_count(0)


def test_audit_rows_and_verify(ui: UiPage) -> None:
    ui.open("#/audit")
    _loaded(ui, "audit")
    table = ui.page.get_by_test_id("audit-table")
    expect(table).to_contain_text("/v1/chat/completions")
    expect(table.locator("tbody tr").first).to_be_visible()
    ui.page.get_by_test_id("audit-verify").click()
    verdict = ui.page.get_by_test_id("audit-verify-result")
    expect(verdict).to_contain_text(re.compile(r"Intact: [\d,]+ rows"))
    expect(verdict).to_have_attribute("data-ok", "true")
    ui.shot("audit-verified")


def test_routes_show_breaker_and_last_error(ui: UiPage) -> None:
    ui.open("#/routes")
    _loaded(ui, "routes")
    route = ui.page.get_by_test_id("route-chat")
    expect(route).to_contain_text("fallback")
    down = route.locator('tr[data-target="down/gpt-test"]')
    expect(down.get_by_test_id("breaker-state")).to_contain_text("open")
    expect(down).to_contain_text("1")  # one failure
    expect(down.locator("td.bad")).not_to_have_count(0)  # the last error
    local = route.locator('tr[data-target^="local/"]')
    expect(local.get_by_test_id("breaker-state")).to_contain_text("closed")
    first = ui.page.get_by_test_id("routes-updated").inner_text()
    expect(ui.page.get_by_test_id("routes-updated")).not_to_have_text(first, timeout=5000)  # refreshed


def test_usage_charts_and_table(ui: UiPage) -> None:
    ui.open("#/usage")
    _loaded(ui, "usage")
    page = ui.page
    table = page.get_by_test_id("usage-table")
    expect(table.locator("tbody tr").first).to_be_visible()
    expect(page.get_by_test_id("chart-usage-requests")).to_have_attribute("data-points", "30")  # 30 days
    page.get_by_test_id("usage-by").select_option("route")
    expect(table).to_contain_text("chat")
    expect(page.get_by_test_id("chart-usage-tokens")).not_to_have_attribute("data-points", "0")
    page.get_by_test_id("usage-by").select_option("key")
    expect(table).to_contain_text("dash-admin")
    # An empty range says so, and an inverted one is refused in the page.
    page.get_by_test_id("usage-since").fill("2001-01-01")
    page.get_by_test_id("usage-until").fill("2001-01-02")
    page.get_by_test_id("usage-apply").click()
    expect(table).to_contain_text("No requests in this range.")
    page.get_by_test_id("usage-since").fill("2001-01-05")
    page.get_by_test_id("usage-apply").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("is after")


def test_batches_list_and_download(ui: UiPage, dashboard: Dashboard) -> None:
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    }
    missing = {**line, "custom_id": "two", "body": {**line["body"], "model": "no-such-model"}}
    lines = json.dumps(line) + "\n" + json.dumps(missing) + "\n"
    with dashboard.client() as client:
        uploaded = client.post("/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"})
        assert uploaded.status_code == 200, uploaded.text
        made = client.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert made.status_code == 200, made.text
        batch_id = made.json()["id"]
    ui.open("#/batches")
    _loaded(ui, "batches")
    row = ui.page.locator(f'tr[data-batch="{batch_id}"]')
    expect(row).to_contain_text("completed", timeout=30_000)  # refreshed every 3 s while running
    expect(row).to_contain_text("1 done")
    expect(row).to_contain_text("1 failed")
    with ui.page.expect_download() as info:
        row.get_by_test_id(f"batch-output-{batch_id}").click()
    download = info.value
    assert download.suggested_filename == f"{batch_id}-output.jsonl"
    assert json.loads(Path(download.path()).read_text().splitlines()[0])["custom_id"] == "one"
    assert "ember-" not in download.url  # fetched with the header, handed over as a blob: URL
    with ui.page.expect_download() as info:
        row.get_by_test_id(f"batch-errors-{batch_id}").click()
    failed = json.loads(Path(info.value.path()).read_text().splitlines()[0])
    assert failed["custom_id"] == "two" and failed["response"]["status_code"] == 404
    ui.shot("batches")


def _pending_approval(dashboard: Dashboard, path: str) -> str:
    """Ask the agent for a note: the scripted model calls fs_write, which waits for a person."""
    call = {"name": "fs_write", "arguments": {"path": path, "content": "hello"}}
    httpx.post(dashboard.upstream + "/_script", json={"queue": [{"tool_calls": [call]}]}).raise_for_status()
    with dashboard.client() as client:
        answer = client.post(
            "/v1/chat/completions", json={"model": AGENT, "messages": [{"role": "user", "content": "write a note"}]}
        )
    assert answer.status_code == 200, answer.text
    pending = answer.json()["ember"]["pending_approvals"]
    assert len(pending) == 1, answer.text
    return pending[0]["id"]


def test_approvals_approve_and_deny(ui: UiPage, dashboard: Dashboard) -> None:
    first = _pending_approval(dashboard, "a.txt")
    second = _pending_approval(dashboard, "b.txt")
    ui.open("#/approvals")
    _loaded(ui, "approvals")
    page = ui.page
    row = page.locator(f'tr[data-approval="{first}"]')
    expect(row).to_contain_text("fs_write")
    expect(row).to_contain_text('"path": "a.txt"')
    expect(page.locator(f'tr[data-approval="{second}"]')).to_be_visible()
    ui.shot("approvals-pending")
    page.get_by_test_id(f"approval-reason-{first}").fill("looks fine")
    page.get_by_test_id(f"approval-approve-{first}").click()
    expect(page.get_by_test_id(f"approval-status-{first}")).to_have_text("approved")
    page.get_by_test_id(f"approval-reason-{second}").fill("not that file")
    page.get_by_test_id(f"approval-deny-{second}").click()
    expect(page.get_by_test_id(f"approval-status-{second}")).to_have_text("denied")
    with dashboard.client() as client:
        decided = {a["id"]: a for a in client.get("/admin/approvals", params={"status": "all"}).json()["data"]}
    assert decided[first]["status"] == "approved" and decided[first]["reason"] == "looks fine"
    assert decided[second]["status"] == "denied" and decided[second]["reason"] == "not that file"
    assert decided[first]["decided_by"] == "dash-admin"
    # Gone from the pending list at the next refresh; the "all" filter still shows both.
    expect(page.locator(f'tr[data-approval="{first}"]')).to_have_count(0, timeout=10_000)
    page.get_by_test_id("approvals-status").select_option("all")
    expect(page.get_by_test_id(f"approval-status-{second}")).to_have_text("denied")


def test_key_prompt_when_no_key(ui_factory, dashboard: Dashboard) -> None:
    ui = ui_factory(key=None)
    ui.console.allow("401")
    ui.open("#/keys")
    prompt = ui.page.get_by_test_id("key-prompt")
    expect(prompt).to_be_visible()
    ui.shot("key-prompt")
    ui.page.get_by_test_id("key-input").fill("ember-not-a-real-key")
    ui.page.get_by_test_id("key-save").click()
    expect(prompt).to_be_visible()  # asked again
    expect(ui.page.get_by_test_id("keys-table")).to_have_count(0)
    ui.page.get_by_test_id("key-input").fill(dashboard.admin_key)
    ui.page.get_by_test_id("key-save").click()
    expect(prompt).to_be_hidden()
    expect(ui.page.get_by_test_id("keys-table")).to_contain_text("dash-admin")
    assert ui.page.evaluate("sessionStorage.getItem('ember.key')") == dashboard.admin_key
    assert ui.page.evaluate("localStorage.length") <= 1  # the theme at most: never the key
    assert dashboard.admin_key not in ui.page.url
    assert dashboard.admin_key not in dashboard.server.log()  # nor in the server's log


def test_admin_page_with_a_non_admin_key(ui_factory, dashboard: Dashboard) -> None:
    ui = ui_factory(key=dashboard.user_key)
    ui.console.allow("403")
    for page_id in ("keys", "audit", "usage"):
        ui.open(f"#/{page_id}")
        expect(ui.page.locator("#page")).to_contain_text("needs a key with the admin scope")
    ui.shot("needs-admin")
    ui.open("#/batches")  # any key may see its own batches
    _loaded(ui, "batches")
    expect(ui.page.get_by_test_id("batches-table")).to_contain_text("No batches for this key.")


def test_phone_width_and_dark_theme(ui_factory, dashboard: Dashboard) -> None:
    """Every page, reached through the collapsed nav, at a phone's width in the dark theme."""
    ui = ui_factory(
        key=dashboard.admin_key,
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        is_mobile=True,
        has_touch=True,
    )
    ui.open("#/overview")
    page = ui.page
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    nav = page.locator("#nav")
    toggle = page.get_by_test_id("nav-toggle")
    for page_id in PAGES:
        expect(toggle).to_be_visible()
        toggle.click()
        nav.get_by_test_id(f"nav-{page_id}").click()
        _loaded(ui, page_id)
        expect(nav.get_by_test_id(f"nav-{page_id}")).to_be_hidden()  # the nav closes again
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the {page_id} page is {width}px wide at a phone's 390px"
        ui.shot(f"phone-dark-{page_id}")
    page.get_by_test_id("theme-toggle").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate("localStorage.getItem('ember.theme')") == "light"
    page.reload()
    _loaded(ui, PAGES[-1])
    assert page.evaluate("document.documentElement.dataset.theme") == "light"  # the toggle is kept


def test_a_network_failure_is_shown_in_the_page(ui: UiPage) -> None:
    ui.console.allow_text("net::ERR_FAILED")
    ui.page.route("**/admin/routes", lambda route: route.abort())
    ui.open("#/routes")
    expect(ui.page.get_by_test_id("error-banner")).to_contain_text("cannot reach the server")
    ui.page.unroute("**/admin/routes")
    expect(ui.page.get_by_test_id("route-chat")).to_be_visible(timeout=10_000)  # the next refresh draws it
    expect(ui.page.get_by_test_id("error-banner")).to_be_hidden()  # and takes the stale error away


def test_no_key_asked_where_none_is_needed(browser, server) -> None:
    """On loopback with keys off (the default server), admin pages open without a key prompt."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        console = ConsoleErrors()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_page_error)
        for page_id in ("keys", "audit", "overview"):
            page.goto(server.url(f"/ui#/{page_id}"))
            expect(page.locator(f'#page [data-page="{page_id}"] h1').first).to_be_visible()
            page.wait_for_load_state("networkidle")
            expect(page.get_by_test_id("key-prompt")).to_be_hidden()
            expect(page.get_by_test_id("error-banner")).to_be_hidden()
        expect(page.get_by_test_id("chart-requests")).to_be_visible()  # the overview, last, has its charts
        assert not console.errors, console.report()
    finally:
        context.close()
