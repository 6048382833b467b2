"""Response bodies for streams: Server-Sent Events (OpenAI) and NDJSON (Ollama)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from ember.errors import EmberError

log = logging.getLogger("ember.api")


def dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_response(events: AsyncIterator[dict[str, Any]],
                 headers: dict[str, str] | None = None) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {dumps(event)}\n\n"
        except EmberError as exc:
            yield f"data: {dumps(exc.to_openai())}\n\n"
        except Exception:  # the stream has begun: the status is sent, so report in-band
            log.exception("stream failed")
            yield f"data: {dumps(EmberError('internal error while streaming').to_openai())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


def ndjson_response(events: AsyncIterator[dict[str, Any]],
                    headers: dict[str, str] | None = None) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield dumps(event) + "\n"
        except EmberError as exc:
            yield dumps(exc.to_ollama()) + "\n"
        except Exception:
            log.exception("stream failed")
            yield dumps({"error": "internal error while streaming"}) + "\n"

    return StreamingResponse(body(), media_type="application/x-ndjson", headers=headers)
