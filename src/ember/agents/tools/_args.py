"""Arguments of the built-in tools: a validation error as one line the model can act on."""

from __future__ import annotations

from pydantic import ValidationError


def argument_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "bad arguments: " + "; ".join(parts)
