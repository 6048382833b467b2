"""The CLI's HTTP client of an ember server, and the mapping of its failures to EmberError.

Every command talks to the server through this one class, so "server down", "server said
no" and "stream broke" each read the same way whatever command hit them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any, BinaryIO

import httpx

from ember.config import Settings
from ember.errors import EmberError

# Connecting to loopback is instant when a server is there; a long connect timeout would only
# delay the "cannot reach" message. Reads get longer: the first request may load a model.
_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 120.0


class ServerUnreachable(EmberError):
    """Nothing answers at the configured address."""

    status_code = 503

    def __init__(self, base_url: str) -> None:
        super().__init__(f"cannot reach ember at {base_url}: is `ember serve` running?")
        self.base_url = base_url


class ServerError(EmberError):
    """The server answered with an error body ({"error": ...})."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


def error_message(body: Any, fallback: str) -> str:
    """The human message inside an Ollama, OpenAI or FastAPI error body."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str) and error:
            return error
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:  # FastAPI validation errors
            first = detail[0]
            if isinstance(first, dict):
                where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
                return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    return fallback


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    fallback = response.text.strip() or f"server answered {response.status_code} {response.reason_phrase}"
    raise ServerError(error_message(body, fallback), response.status_code)


class EmberClient:
    """Blocking client of the Ollama-compatible /api/* endpoints of one ember server."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(_READ_TIMEOUT, connect=_CONNECT_TIMEOUT),
            transport=transport,
            # A proxy configured for the internet must not swallow calls to our own loopback server.
            trust_env=False,
            # A server that requires keys (EMBER_AUTH) gets the one in EMBER_API_KEY. The client
            # header names the CLI as the decider of an approval on a server without keys.
            headers={"X-Ember-Client": "cli"}
            | ({"Authorization": f"Bearer {key}"} if (key := os.environ.get("EMBER_API_KEY")) else {}),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EmberClient:
        return cls(settings.base_url)

    def __enter__(self) -> EmberClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, json_body: Any = None, params: Any = None, files: Any = None
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json_body, params=params, files=files)
        except httpx.ConnectError as exc:
            raise ServerUnreachable(self.base_url) from exc
        except httpx.ConnectTimeout as exc:
            raise ServerUnreachable(self.base_url) from exc
        except httpx.TransportError as exc:
            raise EmberError(f"lost connection to ember at {self.base_url}: {exc}") from exc
        _raise_for_status(response)
        return response

    def _json(
        self, method: str, path: str, json_body: Any = None, *, params: Any = None, files: Any = None
    ) -> dict[str, Any]:
        response = self._request(method, path, json_body=json_body, params=params, files=files)
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError as exc:
            raise EmberError(f"ember at {self.base_url} sent a body that is not JSON on {path}") from exc
        return body if isinstance(body, dict) else {"value": body}

    def _stream(self, path: str, json_body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON line; an {"error": ...} line raises ServerError."""
        try:
            # Generation and downloads can pause for a long time between lines (a model load,
            # a slow mirror): no read timeout on streams, only on connecting.
            with self._http.stream(
                "POST", path, json=json_body, timeout=httpx.Timeout(None, connect=_CONNECT_TIMEOUT)
            ) as response:
                _raise_for_status(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        raise EmberError(f"ember sent a line that is not JSON: {line[:80]!r}") from exc
                    if isinstance(event, dict) and event.get("error"):
                        raise ServerError(error_message(event, "stream failed"))
                    if isinstance(event, dict):
                        yield event
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(self.base_url) from exc
        except httpx.TransportError as exc:
            raise EmberError(f"lost connection to ember at {self.base_url}: {exc}") from exc

    # -- endpoints --------------------------------------------------------------------------

    def root(self) -> str:
        return self._request("GET", "/").text

    def version(self) -> str:
        return str(self._json("GET", "/api/version").get("version", "unknown"))

    def tags(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/tags").get("models") or [])

    def ps(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/ps").get("models") or [])

    def show(self, model: str) -> dict[str, Any]:
        return self._json("POST", "/api/show", {"model": model})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", json_body={"model": model})

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", json_body={"source": source, "destination": destination})

    def unload(self, model: str) -> None:
        """Ollama's way to stop a model: a generate with no prompt and keep_alive 0."""
        self._json("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False})

    def pull(self, source: str, *, destination: str | None = None) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {"model": source, "stream": True}
        if destination:
            body["destination"] = destination
        return self._stream("/api/pull", body)

    def admin(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET /admin/<path> (usage totals, routes)."""
        try:
            response = self._http.get(f"/admin/{path}", params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(self.base_url) from exc
        except httpx.TransportError as exc:
            raise EmberError(f"lost connection to ember at {self.base_url}: {exc}") from exc
        _raise_for_status(response)
        return dict(response.json())

    def chat(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._stream("/api/chat", {**request, "stream": True})

    def call(
        self, method: str, path: str, *, json_body: Any = None, params: Any = None, files: Any = None
    ) -> dict[str, Any]:
        """Any JSON endpoint, e.g. the OpenAI-style /v1/files and /v1/batches the batch commands use."""
        return self._json(method, path, json_body, params=params, files=files)

    def download(self, path: str, sink: BinaryIO) -> int:
        """GET `path` and write its body to `sink` as it arrives; the number of bytes written."""
        written = 0
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(None, connect=_CONNECT_TIMEOUT)) as response:
                _raise_for_status(response)
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(self.base_url) from exc
        except httpx.TransportError as exc:
            raise EmberError(f"lost connection to ember at {self.base_url}: {exc}") from exc
        return written
