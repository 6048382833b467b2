"""The dashboard's fixtures: one real server (keys required, the real model) for the session, one
headless Debian chromium per module, and a page per test whose console errors fail the test.

Chromium logs every 4xx a page's fetch receives as a console error ("Failed to load resource");
a test that expects one (the key prompt's 401, a non-admin key's 403) says so with
`console.allow("401")`, and every other console error or uncaught exception fails the test, as
does a request whose URL carries a key (keys travel in the Authorization header only).
Screenshots go to $EMBER_SCREENSHOTS, else to the session's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.conftest import DEFAULT_MODEL, ServerHandle, free_port, start_server
from tests.gateway.conftest import start_upstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where the shell keeps the key (sessionStorage), as app.js names it.
KEY_STORAGE = "ember.key"
AGENT = "agent/scribe"  # writes files with fs_write, each call asking a person first


@dataclass
class Dashboard:
    """The session's server and the keys made for it before it started."""

    server: ServerHandle
    admin_key: str
    user_key: str  # chat, embed, models: no admin scope
    upstream: str  # the scripted upstream's root URL (POST /_script, GET /_history)

    def url(self, path: str = "/ui") -> str:
        return self.server.url(path)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.server.base_url, headers=headers, timeout=60)


@pytest.fixture(scope="package")  # stopped once tests/dashboard is done, not at the session's end
def dashboard(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    from ember.guard.keys import KeyStore

    root = tmp_path_factory.mktemp("dash")
    home, files, logs = root / "home", root / "files", root / "logs"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    files.mkdir()
    logs.mkdir()
    store = KeyStore(home / "state" / "keys.db")
    try:
        admin, _ = store.create("dash-admin", frozenset({"chat", "embed", "models", "admin", "tools"}))
        user, _ = store.create("dash-user", frozenset({"chat", "embed", "models"}))
    finally:
        store.close()
    upstream = start_upstream(logs)  # the scripted model the agent runs on (its tool calls ask approval)
    # A route whose first target is a closed loopback port: the Routes page has a breaker to show.
    config = home / "ember.toml"
    config.write_text(
        f'[[providers]]\nname = "down"\nkind = "openai"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n\n'
        f'[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "{upstream.v1}"\n\n'
        f'[[routes]]\nmodel = "chat"\ntargets = ["down/gpt-test", "local/{DEFAULT_MODEL}"]\n'
        'strategy = "fallback"\nbreaker = { failures = 1, cooldown = 600 }\n\n'
        f'[tools.fs]\nroot = "{files}"\nwritable = true\n\n'
        f'[[agents]]\nname = "{AGENT.removeprefix("agent/")}"\nmodel = "up/gpt-test"\n'
        'instructions = "You write notes."\ntools = ["fs_write"]\nrequire_approval = ["fs_write"]\n'
    )
    try:
        # Two slots: the stop test checks that the stopped request's slot is free again.
        handle = start_server(home, logs, EMBER_AUTH="required", EMBER_NUM_PARALLEL="2", EMBER_CONFIG=str(config))
    except BaseException:
        upstream.stop()
        raise
    try:
        dash = Dashboard(handle, admin, user, upstream.url)
        with dash.client() as client:  # usage, audit and route health for the pages to show
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            )
            assert answer.status_code == 200, answer.text
        yield dash
    finally:
        handle.stop()
        upstream.stop()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("EMBER_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Per module, not per session: while Playwright's sync API is started it marks its own asyncio
# loop as running in this thread between calls, so any later async test (pytest-asyncio,
# asyncio.run) in the session would fail with "cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/debian-packages.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class ConsoleErrors:
    """Console errors and uncaught exceptions of one page; failed loads with allowed statuses pass."""

    errors: list[str] = field(default_factory=list)
    allowed_statuses: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    allowed_texts: set[str] = field(default_factory=set)

    def allow(self, *statuses: str) -> None:
        self.allowed_statuses.update(statuses)

    def allow_text(self, *fragments: str) -> None:
        """Console errors holding one of these pass (a network failure a test provokes)."""
        self.allowed_texts.update(fragments)

    def on_console(self, message: object) -> None:
        if getattr(message, "type", "") != "error":
            return
        text: str = getattr(message, "text", "")
        status = re.search(r"Failed to load resource: the server responded with a status of (\d+)", text)
        if status and status.group(1) in self.allowed_statuses:
            return
        if any(fragment in text for fragment in self.allowed_texts):
            return
        location = getattr(message, "location", {}) or {}
        self.errors.append(f"console: {text} ({location.get('url', '')}:{location.get('lineNumber', '')})")

    def on_page_error(self, error: object) -> None:
        self.errors.append(f"uncaught: {error}")

    def on_request(self, request: object) -> None:
        self.urls.append(getattr(request, "url", ""))

    def keys_in_urls(self, *keys: str) -> list[str]:
        """Request URLs that carry a key: there must be none (keys go in a header)."""
        return [url for url in self.urls if any(key in url for key in keys)]

    def on_response(self, response: object) -> None:
        """Keep each failed answer's request, so a console line about it can be traced."""
        status: int = getattr(response, "status", 0)
        if status >= 400 and str(status) not in self.allowed_statuses:
            request = getattr(response, "request", None)
            body = getattr(request, "post_data", None) or ""
            self.failed.append(f"{status} {getattr(request, 'method', '')} {getattr(response, 'url', '')} {body[:200]}")

    def report(self) -> str:
        return "\n".join(self.errors + (["failed requests:", *self.failed] if self.failed else []))


@dataclass
class UiPage:
    """A browser page on the dashboard, its console watched."""

    page: object  # playwright.sync_api.Page
    console: ConsoleErrors
    dashboard: Dashboard
    screenshots: Path

    def open(self, hash_path: str = "#/overview") -> None:
        self.page.goto(self.dashboard.url("/ui") + hash_path)  # type: ignore[attr-defined]

    def shot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)  # type: ignore[attr-defined]
        return path


def _new_page(browser: object, dashboard: Dashboard, screenshots: Path, key: str | None, **context_args: object):
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context_args})  # type: ignore[attr-defined]
    if key is not None:
        # As if the key prompt had been answered in this tab: the shell reads sessionStorage.
        context.add_init_script(f"window.sessionStorage.setItem({KEY_STORAGE!r}, {key!r});")
    page = context.new_page()
    page.set_default_timeout(15_000)
    console = ConsoleErrors()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    page.on("response", console.on_response)
    page.on("request", console.on_request)
    return context, UiPage(page, console, dashboard, screenshots)


@pytest.fixture
def ui(browser: object, dashboard: Dashboard, screenshot_dir: Path) -> Iterator[UiPage]:
    """A page holding the admin key, as after the key prompt."""
    context, page = _new_page(browser, dashboard, screenshot_dir, dashboard.admin_key)
    try:
        yield page
        assert not page.console.errors, page.console.report()
        assert not page.console.keys_in_urls(dashboard.admin_key, dashboard.user_key)
    finally:
        context.close()


@pytest.fixture
def ui_factory(browser: object, dashboard: Dashboard, screenshot_dir: Path) -> Iterator[object]:
    """Pages with another key (or none) and other context options (viewport, color_scheme)."""
    made: list[tuple[object, UiPage]] = []

    def make(key: str | None = None, **context_args: object) -> UiPage:
        context, page = _new_page(browser, dashboard, screenshot_dir, key, **context_args)
        made.append((context, page))
        return page

    try:
        yield make
        assert not any(page.console.errors for _, page in made), "\n".join(page.console.report() for _, page in made)
        assert not any(page.console.keys_in_urls(dashboard.admin_key, dashboard.user_key) for _, page in made)
    finally:
        for context, _ in made:
            context.close()  # type: ignore[attr-defined]
