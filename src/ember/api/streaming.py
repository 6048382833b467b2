"""Streamed response bodies in the request's protocol: its framing, its in-band errors, its end.

A stream's items are chunk dicts, framed here by the protocol, or strings already framed (a
renderer that builds its hot chunks' bytes itself, as api/openai/render.TextFrames does).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from ember.api.protocols import WireProtocol
from ember.errors import EmberError

log = logging.getLogger("ember.api")


def stream_response(
    protocol: WireProtocol, events: AsyncIterator[dict[str, Any] | str], headers: dict[str, str] | None = None
) -> StreamingResponse:
    frame = protocol.frame

    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event if isinstance(event, str) else frame(event)
        except EmberError as exc:
            yield protocol.stream_error(exc)
        except Exception:  # the stream has begun: the status is sent, so report in-band
            log.exception("stream failed")
            yield protocol.stream_error(EmberError("internal error while streaming"))
        if protocol.stream_end:
            yield protocol.stream_end

    if protocol.media_type == "text/event-stream":
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
    return StreamingResponse(body(), media_type=protocol.media_type, headers=headers)
