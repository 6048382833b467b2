"""One exception hierarchy for everything ember reports to a client.

Each error says what went wrong (message, the offending parameter, a machine-readable code)
and the HTTP status it answers with; how a protocol spells it is the API layer's business
(api/<protocol>/render.py).
"""

from __future__ import annotations


def retry_after_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, rounded up (a thousandth is forgiven), at least 1."""
    return max(1, int(seconds + 0.999))


class EmberError(Exception):
    """Base class: a failure with a message meant for the caller."""

    status_code: int = 500
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class BadRequest(EmberError):
    status_code = 400


class InvalidModelName(BadRequest):
    default_code = "invalid_model_name"


class ContextLengthExceeded(BadRequest):
    default_code = "context_length_exceeded"


class UnsupportedParameter(BadRequest):
    """A request field ember knows but cannot honour: refused, never silently ignored."""

    default_code = "unsupported_parameter"


class UnsupportedModelFormat(BadRequest):
    """A model file we recognise but cannot serve yet (safetensors, ONNX)."""

    default_code = "unsupported_model_format"


class NotAModelFile(BadRequest):
    default_code = "not_a_model_file"


class NotFound(EmberError):
    status_code = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str, message: str | None = None) -> None:
        self.model = model
        super().__init__(
            message or f"model '{model}' not found, try pulling it first",
            param="model",
        )


class UnknownCatalogName(NotFound):
    """A pull of a short name the catalog does not know."""

    default_code = "model_not_in_catalog"


class Conflict(EmberError):
    status_code = 409
    default_code = "conflict"


class PullFailed(EmberError):
    """The source of a pull could not be read (network, checksum, package)."""

    status_code = 502
    default_code = "pull_failed"


class ServiceUnavailable(EmberError):
    status_code = 503
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None, code: str | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, code=code, headers=headers)


class ModelLoadFailed(ServiceUnavailable):
    """The model file exists but the engine could not load it (corrupt, truncated, too big)."""

    default_code = "model_load_failed"


class Unauthorized(EmberError):
    """No key, or a key that is wrong, expired or revoked: 401 (never says which)."""

    status_code = 401
    default_code = "invalid_api_key"


class Forbidden(EmberError):
    """A valid key without the scope this endpoint needs: 403."""

    status_code = 403
    default_code = "insufficient_scope"


class PayloadTooLarge(EmberError):
    status_code = 413
    default_code = "request_too_large"


class RateLimited(EmberError):
    """429 with Retry-After: a rate limit (code rate_limit_exceeded) or a spent budget (insufficient_quota)."""

    status_code = 429
    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        merged = dict(headers or {})
        if retry_after is not None:
            merged["Retry-After"] = str(retry_after_seconds(retry_after))
        super().__init__(message, code=code, headers=merged)
        self.retry_after = retry_after


class UpstreamError(EmberError):
    """A provider behind the gateway failed: refused, 5xx, 429, or a broken stream.

    `upstream_status` is what the provider answered (None: no answer at all). The gateway
    moves on to the next target for these; the client sees one only when none is left.
    """

    status_code = 502
    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        headers = {}
        if upstream_status == 429:
            self.status_code = 429
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after_seconds(retry_after))
        super().__init__(message, code=code, headers=headers)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"


class ConfigError(EmberError):
    """ember.toml is unreadable or wrong; the message names the file and line."""

    default_code = "config_error"
