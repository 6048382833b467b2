"""The `http_fetch` built-in: GET or POST one http(s) URL on an allowlisted host.

Invariants:
- Each hop (the URL, then every redirect's Location) goes through netguard.check: only http and
  https, the host allowed, its addresses checked after resolution; the connection goes to the
  checked IP, with the Host header and TLS SNI (and certificate check) set to the host's name.
- Redirects are followed here, never by httpx, up to `max_redirects`; a 303 (and a 301/302 after
  a POST) becomes a GET without a body, as browsers do; Authorization and Cookie are dropped when
  a redirect leaves the host.
- The body is streamed and reading stops at `max_bytes` (the answer says it was cut); the whole
  fetch, redirects included, is bounded by `timeout`. No proxy from the environment is used.
- An HTTP error status is an answer (the model reads it), not a tool error; a refusal, a network
  failure, a timeout or too many redirects is a tool error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.agents.tools import netguard
from ember.agents.tools._args import argument_error
from ember.agents.tools.builtin_config import HttpFetchConfig
from ember.agents.types import ToolOutcome, ToolSpec

_REDIRECTS = {301, 302, 303, 307, 308}
# Headers the tool sets itself (or that would let a request smuggle another one).
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
_CROSS_HOST_DROP = {"authorization", "cookie", "proxy-authorization"}
MAX_REQUEST_BODY = 1 << 20
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]{0,8192}")

log = logging.getLogger(__name__)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192)
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    # One context for all fetches: loading the CA bundle each time costs more than the rest.
    return httpx.create_ssl_context()


class _Refused(Exception):
    pass


def _split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL the tool may fetch, or _Refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Refused(f"bad URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _Refused(f"only http and https URLs may be fetched, not {scheme or 'a URL without a scheme'!r}")
    if not parts.hostname:
        raise _Refused(f"the URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise _Refused("credentials in the URL are not supported: send an Authorization header")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


class HttpFetchTool:
    """Fetches one URL; answers JSON {status, url, content_type, body}."""

    def __init__(self, config: HttpFetchConfig) -> None:
        self.config = config
        self._spec = ToolSpec(
            name="http_fetch",
            description=(
                f"Fetch an http(s) URL ({' or '.join(config.methods)}) from an allowed host "
                f"({', '.join(config.allow_hosts)}); answers the status, content type and the body "
                f"as text (at most {config.max_bytes} bytes)."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "an http:// or https:// URL"},
                    "method": {"type": "string", "enum": list(config.methods), "default": "GET"},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "request headers",
                    },
                    "body": {"type": "string", "description": "the request body (POST)"},
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            timeout=config.timeout + 5,
            require_approval=config.require_approval,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        try:
            args = _Args.model_validate(arguments)
        except ValidationError as exc:
            return ToolOutcome(argument_error(exc), is_error=True)
        if args.method not in self.config.methods:
            return ToolOutcome(f"method {args.method} is not allowed; allowed: {', '.join(self.config.methods)}", True)
        if args.body is not None and args.method == "GET":
            return ToolOutcome("a GET has no body: use POST", is_error=True)
        body = args.body.encode() if args.body is not None else None
        if body is not None and len(body) > MAX_REQUEST_BODY:
            return ToolOutcome(f"the body is over {MAX_REQUEST_BODY} bytes", is_error=True)
        reserved = sorted(h for h in args.headers if h.lower() in _RESERVED_HEADERS)
        if reserved:
            return ToolOutcome(f"header(s) {', '.join(reserved)} are set by the tool, not by the caller", True)
        for name, value in args.headers.items():
            if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
                return ToolOutcome(f"bad header {name!r}: names are tokens, values printable ASCII", True)
        try:
            async with asyncio.timeout(self.config.timeout):
                return await self._fetch(args.url, args.method, dict(args.headers), body)
        except TimeoutError:
            return ToolOutcome(f"the fetch took longer than {self.config.timeout:g} s", is_error=True)
        except (_Refused, netguard.Refused) as exc:
            return ToolOutcome(f"refused: {exc}", is_error=True)
        except httpx.HTTPError as exc:
            return ToolOutcome(f"the fetch failed: {type(exc).__name__}: {exc}", is_error=True)
        except (OSError, ssl.SSLError) as exc:
            return ToolOutcome(f"the fetch failed: {exc}", is_error=True)
        except Exception as exc:  # a bug here is the tool's failure, not the run's (types.py)
            log.exception("http_fetch failed unexpectedly")
            return ToolOutcome(f"the fetch failed: {type(exc).__name__}: {exc}", is_error=True)

    async def _fetch(self, url: str, method: str, headers: dict[str, str], body: bytes | None) -> ToolOutcome:
        config = self.config
        async with httpx.AsyncClient(
            verify=_tls(),
            trust_env=False,  # a proxy from the environment would connect by name, past the check
            follow_redirects=False,
            timeout=httpx.Timeout(config.timeout),
        ) as client:
            for hop in range(config.max_redirects + 1):
                scheme, host, port = _split(url)
                target = await netguard.check(host, port, config.allow_hosts)
                response = await self._send(client, url, target, method, headers, body, scheme)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        if hop == config.max_redirects:
                            raise _Refused(f"more than {config.max_redirects} redirects (the last to {location})")
                        next_url = urljoin(url, location)
                        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                            method, body = "GET", None
                        if _split(next_url)[1:] != (host, port):
                            headers = {k: v for k, v in headers.items() if k.lower() not in _CROSS_HOST_DROP}
                        url = next_url
                        continue
                    return await self._answer(response, url)
                finally:
                    await response.aclose()
        raise AssertionError("unreachable")  # the loop returns or raises

    @staticmethod
    async def _send(
        client: httpx.AsyncClient,
        url: str,
        target: netguard.Target,
        method: str,
        headers: dict[str, str],
        body: bytes | None,
        scheme: str,
    ) -> httpx.Response:
        """The response of a request to a checked IP that the server sees as one to `url`'s
        host; the next address when one cannot be connected to."""
        parts = httpx.URL(url)
        host_header = parts.netloc.decode("ascii")
        for i, address in enumerate(target.addresses):
            request = client.build_request(
                method,
                parts.copy_with(host=address),
                headers={**headers, "Host": host_header},
                content=body,
                extensions={"sni_hostname": target.host} if scheme == "https" else {},
            )
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(target.addresses) - 1:
                    raise
        raise AssertionError("unreachable")  # check() never returns an empty target

    async def _answer(self, response: httpx.Response, url: str) -> ToolOutcome:
        cap = self.config.max_bytes
        data = bytearray()
        cut = False
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > cap:
                cut = True
                break
        kept = bytes(data[:cap])
        answer: dict[str, Any] = {
            "status": response.status_code,
            "url": url,
            "content_type": response.headers.get("content-type", ""),
            "body": "",
        }
        if b"\x00" in kept:
            # Text has no NUL bytes: this is an image, an archive...; its bytes would be noise.
            answer["body_note"] = f"binary content ({'at least ' if cut else ''}{len(data)} bytes), not shown"
            return ToolOutcome(json.dumps(answer, ensure_ascii=False))
        try:
            answer["body"] = kept.decode(response.charset_encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            answer["body"] = kept.decode("utf-8", errors="replace")
        if cut:
            answer["body_note"] = f"cut at {cap} bytes"
        return ToolOutcome(json.dumps(answer, ensure_ascii=False))
