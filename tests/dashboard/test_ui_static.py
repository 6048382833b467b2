"""GET /ui and its static files, over HTTP from the real server: the page, every module and the
vendored chart library with the right types; no file that reaches beyond the server; nothing
outside static/ reachable; the page loads without a key where keys are required, the API does
not; and the package data ships every static file."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest
from tests.conftest import ServerHandle
from tests.dashboard.conftest import Dashboard

import ember.dashboard

STATIC = Path(ember.dashboard.__file__).parent / "static"
ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(p for p in STATIC.rglob("*") if p.is_file())
OWN = [p for p in FILES if "vendor" not in p.relative_to(STATIC).parts]
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".md": "text/plain", "": "text/plain"}
URL = re.compile(r"https?://[\w.\[\]:-]+")
LOOPBACK = re.compile(r"^https?://(?:127\.\d+\.\d+\.\d+|localhost|\[::1\])(?::\d+)?$")
# Where a URL would make the browser load something: an import, a fetch, a CSS url(), src or href.
LOADS = re.compile(
    r"""(?:\bfrom\s*|\bimport\s*\(\s*|\bfetch\s*\(\s*|url\(\s*|\bsrc\s*=\s*|\bhref\s*=\s*)["']?(?:https?:)?//"""
)


def test_index(server: ServerHandle) -> None:
    page = httpx.get(server.url("/ui"), timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/static/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    slash = httpx.get(server.url("/ui/"), timeout=10)
    assert slash.status_code == 308 and slash.headers["location"] == "/ui"
    assert httpx.head(server.url("/ui"), timeout=10).status_code == 200


def test_every_static_file_is_served_with_its_type(server: ServerHandle) -> None:
    assert any(p.name == "uPlot.esm.js" for p in FILES) and any(p.name == "LICENSE" for p in FILES)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for path in FILES:
            rel = path.relative_to(STATIC).as_posix()
            response = client.get(f"/ui/static/{rel}")
            assert response.status_code == 200, rel
            assert response.headers["content-type"].startswith(TYPES[path.suffix]), rel
            assert response.content == path.read_bytes(), rel


def test_module_imports_resolve() -> None:
    """Every relative import of every module names a file that exists (there is no build step
    to catch a typo), and every page in the shell's nav has its module, exporting its own id."""
    for path in [p for p in FILES if p.suffix == ".js"]:
        text = path.read_text()
        for spec in re.findall(r"""(?:^|\s)(?:import|export)\s[^"';]*?from\s+["']([^"']+)["']""", text, re.M):
            assert spec.startswith("."), f"{path.name} imports {spec!r}: only files of this package"
            assert (path.parent / spec).resolve().is_file(), f"{path.name}: {spec}"
    app = (STATIC / "app.js").read_text()
    nav = re.search(r"export const PAGES = \[(.*?)\];", app, re.S)
    assert nav is not None
    ids = re.findall(r'id: "([\w-]+)"', nav.group(1))
    assert {"overview", "models", "chat"} <= set(ids)
    for page_id in ids:
        module = STATIC / "pages" / f"{page_id}.js"
        assert module.is_file(), f"the nav names {page_id} but pages/{page_id}.js is missing"
        text = module.read_text()
        assert f'id: "{page_id}"' in text and "export default" in text and "async mount(" in text


def test_no_file_reaches_beyond_the_server() -> None:
    """No CDN, font or script host: the page's own files name no host but loopback, and the
    vendored library's URLs are only in its comments (nothing it imports, fetches or links)."""
    for path in OWN:
        for url in URL.findall(path.read_text()):
            assert LOOPBACK.match(url), f"{path.relative_to(STATIC)} names {url}"
    for path in FILES:
        if path.suffix in (".js", ".css", ".html"):
            assert not LOADS.search(_code(path.read_text())), f"{path.relative_to(STATIC)} loads something from a host"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/../../app.py",
        "/ui/static/%2e%2e/router.py",
        "/ui/static/..%2f__init__.py",
        "/ui/static/pages",
        "/ui/static/",
        "/ui/static/.hidden.js",
        "/ui/static/nope.js",
        "/ui/static/vendor/uplot/../../../router.py",
        "/ui/static/a%00b.js",  # a NUL byte: no 500
        pytest.param("/ui/static/" + "a" * 5000 + ".js", id="name-too-long"),  # no 500 either
    ],
)
def test_nothing_outside_static(server: ServerHandle, path: str) -> None:
    response = httpx.get(server.url(path), timeout=10)
    assert response.status_code == 404, (path, response.text[:200])
    assert "__future__" not in response.text  # no source file came back


def test_the_page_loads_without_a_key_and_the_api_does_not(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.server.base_url, timeout=10) as anonymous:
        assert anonymous.get("/ui").status_code == 200
        assert anonymous.get("/ui/static/app.js").status_code == 200
        assert anonymous.get("/ui/static/vendor/uplot/uPlot.esm.js").status_code == 200
        for api in ("/admin/stats", "/api/tags", "/v1/models"):
            assert anonymous.get(api).status_code == 401, api
        # Open means the dashboard's files, not a prefix that reaches a route outside them.
        assert anonymous.get("/ui/static/../../admin/stats").status_code in (401, 404)
        assert anonymous.get("/uiadmin").status_code == 401


def test_package_data_ships_every_static_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ember"]
    package = STATIC.parents[1]  # src/ember
    for path in FILES:
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


def _code(text: str) -> str:
    """The text without its /* block */ and // line comments (a URL in a string keeps its //, as
    the character before it is a colon or a quote)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?<![:\"'\\])//.*", "", text)
