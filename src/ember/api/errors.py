"""Error handlers: every failure leaves in the error format of the protocol that was spoken."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.api.json_body import field_path
from ember.api.protocols import error_body_for
from ember.errors import BadRequest, EmberError, NotFound

log = logging.getLogger("ember.api")


def render_error(request: Request, error: EmberError) -> JSONResponse:
    """The error in the format of the protocol the request speaks (chosen once, api/protocols.py)."""
    return JSONResponse(error_body_for(request.scope, error), status_code=error.status_code, headers=error.headers)


# Pydantic names the member of a union it tried in the error's location: a type ("str",
# "list[str]", "literal['auto','none']", "function-after[...]") or a model class ("NamedToolChoice").
_UNION_TAG = re.compile(r"[\[\]'\-,]|^[A-Z]|^(str|int|float|bool|dict|list|none|any)$")


def _location(error: Any) -> tuple[str | int, ...]:
    """The field the error is about, without "body" and the union members' tags."""
    return tuple(p for p in error.get("loc", ()) if p != "body" and not (isinstance(p, str) and _UNION_TAG.search(p)))


def _describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """One readable sentence from pydantic's error list, and the offending field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")).strip(), None
    loc = _location(first)
    if not loc:  # the body itself
        if first.get("type") == "missing":
            return "the request body is empty: send a JSON object", None
        if first.get("type") in ("model_attributes_type", "model_type", "dict_type"):
            return f"the request body must be a JSON object, not {_json_kind(first.get('input'))}", None
    # A union's members fail alike at one field: deepest first (an object that is missing a field
    # says which), and at the same depth every member's complaint, joined.
    deepest = max(len(_location(e)) for e in errors)
    same = [e for e in errors if _location(e) == loc] if len(loc) == deepest else []
    if not same:
        first = next(e for e in errors if len(_location(e)) == deepest)
        loc, same = _location(first), [first]
    param = field_path(loc) or None
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param
    message = same[0].get("msg", "invalid request")
    for other in same[1:]:
        message += " or " + str(other.get("msg", "")).removeprefix("Input should be ")
    if param is None:
        return f"invalid request body: {message}", None
    return f"invalid value for '{param}': {message}", param


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EmberError)
    async def ember_error(request: Request, exc: EmberError) -> JSONResponse:
        return render_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(list(exc.errors()))
        return render_error(request, BadRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: EmberError = NotFound(f"no route for {request.method} {request.url.path}")
        else:
            error = EmberError(str(exc.detail))
            error.status_code = exc.status_code
        return render_error(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(request, EmberError("internal server error; see the server log"))
