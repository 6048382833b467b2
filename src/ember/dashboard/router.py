"""GET /ui: the dashboard's page and its static files, served from inside the package.

Invariants:
- Only files under `static/` are served, named by a path that resolves inside it (no `..`, no
  hidden files, no links out); anything else is a 404, never a directory listing.
- Nothing here reads server state: the page is the same for everyone and holds no secret, so the
  guard lets it load without a key (guard/auth.py); every API call the page makes is checked as
  any other client's.
- The page runs only what this package ships: a Content-Security-Policy of 'self' for scripts and
  connections, so no CDN, inline script or third-party host can be reached from it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from ember.errors import NotFound

STATIC = Path(__file__).parent / "static"

# Only the kinds of file the dashboard ships; a module script must come with a JavaScript type.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# Styles may be set inline (the chart library sizes its canvas that way); scripts may not.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated each load: an upgraded server must not run last version's modules from cache.
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
@router.head("")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=_TYPES[".html"], headers=_HEADERS)


@router.get("/")
@router.head("/")
async def index_slash() -> RedirectResponse:
    # One address for the page, so relative module paths resolve the same way.
    return RedirectResponse("/ui", status_code=308)


@router.get("/static/{name:path}")
@router.head("/static/{name:path}")
async def static_file(name: str) -> FileResponse:
    path = _resolve(name)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


def _resolve(name: str) -> Path:
    """The file `name` names under STATIC, or NotFound."""
    parts = Path(name).parts
    if not parts or any(p.startswith(".") for p in parts):
        raise NotFound(f"no dashboard file {name[:200]!r}")
    try:
        path = (STATIC / name).resolve()
        found = path.is_relative_to(STATIC.resolve()) and path.suffix in _TYPES and path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        found = False
    if not found:
        raise NotFound(f"no dashboard file {name[:200]!r}")
    return path
