"""Error handlers: every failure leaves in the error format of the protocol that was spoken."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.api.protocols import error_body_for
from ember.errors import BadRequest, EmberError, NotFound

log = logging.getLogger("ember.api")


def render_error(request: Request, error: EmberError) -> JSONResponse:
    """The error in the format of the protocol the request speaks (chosen once, api/protocols.py)."""
    return JSONResponse(error_body_for(request.scope, error), status_code=error.status_code, headers=error.headers)


def _describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """One readable sentence from pydantic's error list, and the offending field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")).strip(), None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param
    if param is None:
        return f"invalid request body: {message}", None
    return f"invalid value for '{param}': {message}", param


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
